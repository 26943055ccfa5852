# The configurations the tests evaluate (tests/e2e/nixos.rs says what each must render).
let
  drv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/11111111111111111111111111111111-${name}";
  };
  packages = {
    services.gradient.package = drv "gradient-server";
    services.gradient.frontend.package = drv "gradient-frontend";
    services.gradient.worker.package = drv "gradient-worker";
  };
in
{
  # Only the option declarations are read (and the packages, so nothing is missing).
  options = packages;

  # The seed's "Minimal Setup".
  minimal = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      frontend.enable = true;
      configurePostgres = true;
      reverseProxy.nginx.enable = true;
      domain = "gradient.example.com";
      jwtSecretFile = "/run/secrets/gradient-jwt";
      cryptSecretFile = "/run/secrets/gradient-crypt";
    };
  };

  # Caddy with a certificate managed elsewhere, and extra configuration.
  caddy = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      frontend.enable = true;
      reverseProxy.caddy = {
        enable = true;
        useACMEHost = "example.com";
        extraConfig = "encode zstd";
      };
      domain = "gradient.example.com";
      jwtSecretFile = "/run/secrets/gradient-jwt";
      cryptSecretFile = "/run/secrets/gradient-crypt";
    };
  };

  # Every option set (nothing left null), server and worker on one host: its environment must be exactly
  # the variables the binaries read.
  full = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      frontend.enable = true;
      domain = "ci.example.com";
      publicUrl = "https://ci.example.com";
      baseDir = "/srv/gradient";
      listenAddr = "::1";
      port = 8080;
      jwtSecretFile = "/run/secrets/jwt";
      cryptSecretFile = "/run/secrets/crypt";
      metricsTokenFile = "/run/secrets/metrics";
      caFile = "/etc/gradient/workers-ca.pem";
      databaseUrlFile = "/run/secrets/db-url";
      databaseUrl = "postgresql:///gradient?host=/run/postgresql";
      databaseMaxConnections = 40;
      databaseMinConnections = 4;
      databaseWebMaxConnections = 20;
      databaseWebMinConnections = 2;
      reportErrors = true;
      discoverable = false;
      narStore = "s3://nars/gradient";
      s3 = {
        endpoint = "https://s3.example.com";
        region = "eu-central-1";
        accessKeyId = "AKIA";
        secretAccessKeyFile = "/run/secrets/s3";
        pathStyle = false;
      };
      localWorker = {
        id = "550e8400-e29b-41d4-a716-446655440001";
        tokenFile = "/run/secrets/local-worker-token";
      };
      settings = {
        sentryDsn = "https://key@sentry.example.com/1";
        maxProtoConnections = 100;
        workerHeartbeatSecs = 5;
        workerLostAfterSecs = 20;
        keepEvaluations = 9;
        supersedeEvaluations = false;
        maxRequestSize = 4096;
        logLevel = {
          default = "warn";
          cache = "debug";
          web = "error";
          proto = "trace";
        };
        enableRegistration = false;
        deleteState = false;
        cacheTtlHours = 0;
        cacheGcIntervalSecs = 60;
        narStorageOpenTimeoutSecs = 10;
        narSendChunkTimeoutSecs = 11;
        maxConcurrentNarServes = 2;
        maxNarBufferBytes = 1048576;
        trustedProxies = "10.0.0.1/32";
        localIps = "192.168.0.0/16,10.0.0.0/8";
        allowLocalRepositories = true;
        denyPrivateNetworks = true;
      };
      oidc = {
        enable = true;
        required = true;
        clientId = "gradient";
        clientSecretFile = "/run/secrets/oidc";
        discoveryUrl = "https://auth.example.com";
        scopes = [ "openid" "email" ];
        iconUrl = "https://auth.example.com/icon.png";
      };
      email = {
        enable = true;
        requireVerification = true;
        smtpHost = "smtp.example.com";
        smtpPort = 465;
        smtpUsername = "gradient@example.com";
        smtpPasswordFile = "/run/secrets/smtp";
        fromAddress = "gradient@example.com";
        fromName = "CI";
      };
      githubApp = {
        enable = true;
        appId = 123456;
        privateKeyFile = "/run/secrets/gh-key";
        webhookSecretFile = "/run/secrets/gh-hook";
        clientId = "Iv1.0123";
        clientSecretFile = "/run/secrets/gh-client";
        apiUrl = "https://ghe.example.com/api/v3";
        webUrl = "https://ghe.example.com";
      };
      worker = {
        enable = true;
        serverUrl = "ws://[::1]:8080/proto";
        workerId = "550e8400-e29b-41d4-a716-446655440001";
        peersFile = "/run/secrets/peers";
        caFile = "/etc/gradient/ca.pem";
        capabilities = {
          fetch = true;
          eval = true;
          build = true;
          sign = true;
        };
        settings = {
          maxConcurrentBuilds = 8;
          evalWorkers = 2;
          maxConcurrentEvaluations = 2;
          maxEvaluationsPerWorker = 0;
          gcrootsDir = "/nix/var/nix/gcroots/ci";
          probeSubstituters = false;
          logLevel = {
            default = "debug";
            eval = "info";
            build = "warn";
            proto = "trace";
          };
        };
      };
    };
  };

  # A remote build machine: the worker module alone, listening behind nginx with TLS for the server to dial.
  remoteWorker = {
    imports = [ packages ];
    services.gradient.worker = {
      enable = true;
      peersFile = "/run/secrets/gradient-worker-peers";
      discoverable = true;
      port = 3200;
      domain = "builder.example.com";
      capabilities.build = true;
      settings.maxConcurrentBuilds = 8;
      settings.maxProtoConnections = 4;
      settings.maxNixdaemonConnections = 64;
    };
  };

  # The same without TLS on its nginx virtual host.
  remoteWorkerWithoutTls = {
    imports = [ packages ];
    services.gradient.worker = {
      enable = true;
      discoverable = true;
      domain = "builder.example.com";
      useTls = false;
      capabilities.build = true;
    };
  };

  # A dialing worker given a listener's options: they are not passed (the worker would refuse them), with a
  # warning.
  dialingWithListenerOptions = {
    imports = [ packages ];
    services.gradient.worker = {
      enable = true;
      serverUrl = "ws://127.0.0.1:3000/proto";
      port = 4100;
      settings.maxProtoConnections = 2;
    };
  };

  # A worker with every default.
  workerDefaults = {
    imports = [ packages ];
    services.gradient.worker = {
      enable = true;
      serverUrl = "ws://127.0.0.1:3000/proto";
    };
  };

  # A secret given as a Nix path literal would be copied to the store: refused by the option's type.
  storeSecret = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      domain = "x";
      jwtSecretFile = "/nix/store/22222222222222222222222222222222-jwt";
      cryptSecretFile = "/run/secrets/crypt";
    };
  };

  # Both proxies, an incomplete GitHub App, mail without a server: refused with assertions.
  conflicts = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      domain = "x";
      jwtSecretFile = "/run/secrets/jwt";
      cryptSecretFile = "/run/secrets/crypt";
      reverseProxy.nginx.enable = true;
      reverseProxy.caddy.enable = true;
      githubApp.enable = true;
      email.enable = true;
      worker.enable = true;
    };
  };

  # Every entity kind of the declarative state (docs/state.md's complete example, in Nix).
  state = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      domain = "gradient.example.com";
      jwtSecretFile = "/run/secrets/jwt";
      cryptSecretFile = "/run/secrets/crypt";
      settings.deleteState = true;
      state = {
        users = {
          alice = {
            name = "Alice Johnson";
            email = "alice@example.com";
            password_file = "/run/secrets/alice-password";
          };
          ci-bot.email = "ci@example.com";
        };
        organizations.acme = {
          display_name = "ACME Corporation";
          description = "Main development organization";
          created_by = "alice";
          members = {
            alice = "Admin";
            ci-bot = "releaser";
          };
          push_cache = "main";
        };
        roles.releaser = {
          organization = "acme";
          permissions = [ "view_org" "trigger_evaluation" ];
        };
        projects.web-app = {
          organization = "acme";
          display_name = "Web Application";
          repository = "https://github.com/acme/web-app.git";
          branch = "main";
          wildcard = "packages.x86_64-linux.*, checks.x86_64-linux.*";
          keep_evaluations = 10;
          poll_interval_secs = 300;
          created_by = "alice";
          flake_input_overrides = {
            nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
            flake-utils.keep_url = true;
          };
        };
        caches = {
          main = {
            display_name = "Main Binary Cache";
            public = true;
            signing_key_file = "/run/secrets/cache-main-key";
            created_by = "alice";
            organizations = [ "acme" ];
          };
          scratch.created_by = "alice";
        };
        api_keys.ci-runner = {
          key_file = "/run/secrets/ci-runner-key";
          owned_by = "ci-bot";
          permissions = [ "view_org" "trigger_evaluation" ];
          organization = "acme";
        };
        workers.builder-1 = {
          worker_id = "550e8400-e29b-41d4-a716-446655440001";
          organizations = [ "acme" ];
          token_file = "/run/secrets/builder-1-token";
        };
        integrations = {
          acme-hooks = {
            organization = "acme";
            kind = "inbound";
            forge_type = "gitea";
            secret_file = "/run/secrets/acme-hook-secret";
          };
          acme-statuses = {
            organization = "acme";
            kind = "outbound";
            forge_type = "gitea";
            endpoint_url = "https://gitea.example.com";
            access_token_file = "/run/secrets/gitea-token";
          };
        };
      };
    };
  };

  # An override with both url and keep_url, an inbound integration with a token: refused.
  badState = {
    imports = [ packages ];
    services.gradient = {
      enable = true;
      domain = "x";
      jwtSecretFile = "/run/secrets/jwt";
      cryptSecretFile = "/run/secrets/crypt";
      state.projects.p = {
        organization = "o";
        repository = "https://example.com/p.git";
        created_by = "u";
        flake_input_overrides.nixpkgs = {
          url = "github:NixOS/nixpkgs";
          keep_url = true;
        };
      };
      state.integrations.i = {
        organization = "o";
        kind = "inbound";
        secret_file = "/run/secrets/s";
        access_token_file = "/run/secrets/t";
      };
    };
  };
}

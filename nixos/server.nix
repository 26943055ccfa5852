# services.gradient: the Gradient server, its database, its reverse proxy and the web UI.
# Every option that configures the server becomes the GRADIENT_* variable the binary reads (nixos/lib.nix);
# `gradient-server --print-config-schema` lists those, and nixos/tests checks that the two agree.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption types mkIf mkMerge mkDefault literalExpression literalMD;
  glib = import ./lib.nix { inherit lib; };
  cfg = config.services.gradient;

  logLevel = types.enum [ "trace" "debug" "info" "warn" "error" ];
  opt =
    type: default: description:
    mkOption { inherit type default description; };
  nullOpt = type: description: opt (types.nullOr type) null description;
  secretOpt = description: opt (types.nullOr glib.secretPathType) null description;

  # The options passed as plain variables, by the naming rule.
  plainOptions = [
    "domain"
    "publicUrl"
    "baseDir"
    "listenAddr"
    "port"
    "databaseUrl"
    "databaseMaxConnections"
    "databaseMinConnections"
    "databaseWebMaxConnections"
    "databaseWebMinConnections"
    "reportErrors"
    "settings.sentryDsn"
    "discoverable"
    "settings.maxProtoConnections"
    "settings.workerHeartbeatSecs"
    "settings.workerLostAfterSecs"
    "settings.keepEvaluations"
    "settings.supersedeEvaluations"
    "settings.maxRequestSize"
    "settings.logLevel.default"
    "settings.logLevel.cache"
    "settings.logLevel.web"
    "settings.logLevel.proto"
    "settings.enableRegistration"
    "settings.deleteState"
    "settings.cacheTtlHours"
    "settings.cacheGcIntervalSecs"
    "settings.narStorageOpenTimeoutSecs"
    "settings.narSendChunkTimeoutSecs"
    "settings.maxConcurrentNarServes"
    "settings.maxNarBufferBytes"
    "settings.trustedProxies"
    "settings.localIps"
    "settings.allowLocalRepositories"
    "settings.denyPrivateNetworks"
    "oidc.enable"
    "oidc.required"
    "oidc.clientId"
    "oidc.discoveryUrl"
    "oidc.scopes"
    "oidc.iconUrl"
    "email.enable"
    "email.requireVerification"
    "email.smtpHost"
    "email.smtpPort"
    "email.smtpUsername"
    "email.fromAddress"
    "email.fromName"
    "githubApp.enable"
    "githubApp.appId"
    "githubApp.apiUrl"
    "githubApp.clientId"
    "githubApp.webUrl"
    "narStore"
    "s3.endpoint"
    "s3.region"
    "s3.accessKeyId"
    "s3.pathStyle"
    "localWorker.id"
  ];
  # The options naming secret files: systemd credentials.
  secretOptions = [
    "jwtSecretFile"
    "cryptSecretFile"
    "metricsTokenFile"
    "databaseUrlFile"
    "oidc.clientSecretFile"
    "email.smtpPasswordFile"
    "githubApp.privateKeyFile"
    "githubApp.webhookSecretFile"
    "githubApp.clientSecretFile"
    "s3.secretAccessKeyFile"
    "localWorker.tokenFile"
  ];
  credentials = glib.credentialsFor cfg secretOptions;

  localDatabaseUrl = "postgresql:///gradient?host=/run/postgresql&user=gradient";
  upstream = "http://${
    if lib.hasInfix ":" cfg.listenAddr then "[${cfg.listenAddr}]" else cfg.listenAddr
  }:${toString cfg.port}";
  # The web UI's files, served by the server itself (GRADIENT_FRONTEND_DIR).
  frontendRoot = "${cfg.frontend.package}/share/gradient-frontend";
  anyProxy = cfg.reverseProxy.nginx.enable || cfg.reverseProxy.caddy.enable;
in
{
  imports = [ ./state.nix ];

  options.services.gradient = {
    enable = mkEnableOption "the Gradient server (services.gradient)";
    package = mkOption {
      type = types.package;
      description = "The gradient-server package (the flake's `packages.<system>.gradient-server`).";
    };
    frontend = {
      enable = mkEnableOption "the web UI, served by gradient-server at `/` from `frontend.package` (`GRADIENT_FRONTEND_DIR`)";
      package = mkOption {
        type = types.package;
        description = "The web UI build, its files in `share/gradient-frontend` (the flake's `packages.<system>.gradient-frontend`).";
      };
    };

    domain = mkOption {
      type = types.str;
      example = "gradient.example.com";
      description = "Public hostname (required): the reverse proxy's virtual host (`GRADIENT_DOMAIN`).";
    };
    publicUrl = mkOption {
      type = types.nullOr types.str;
      default =
        let
          nginx = cfg.reverseProxy.nginx;
          tls = nginx.forceSSL || nginx.enableACME || nginx.useACMEHost != null;
        in
        if cfg.reverseProxy.caddy.enable || (nginx.enable && tls) then
          "https://${cfg.domain}"
        else if nginx.enable then
          "http://${cfg.domain}"
        else
          null;
      defaultText = literalMD "`https://<domain>` with a reverse proxy serving TLS, else `null` (the server's `http://<domain>`)";
      description = "Base URL of links in commit statuses and webhook URLs, and of the cache URLs given to workers (`GRADIENT_PUBLIC_URL`).";
    };
    baseDir = opt types.str "/var/lib/gradient" "Data directory (the unit's StateDirectory when under /var/lib).";
    listenAddr = opt types.str "127.0.0.1" "Bind address.";
    port = opt types.port 3000 "HTTP port.";
    jwtSecretFile = mkOption {
      type = glib.secretPathType;
      example = "/run/secrets/gradient-jwt";
      description = "Path to the JWT secret file (required; at least 32 bytes, e.g. `openssl rand -base64 48`).";
    };
    cryptSecretFile = mkOption {
      type = glib.secretPathType;
      example = "/run/secrets/gradient-crypt";
      description = "Path to the encryption secret file (required): encrypts the secrets stored in the database.";
    };
    caFile = nullOpt types.path ''
      PEM file of extra CA certificates the server trusts besides the webpki roots and the system's bundle when
      it dials a discoverable worker's `wss://` URL whose certificate comes from a private CA (not a secret: a
      Nix path literal is copied to the store).
    '';
    metricsTokenFile = secretOpt "When set, enables GET /metrics; scrapers present the file's contents as `Authorization: Bearer <token>`.";
    databaseUrlFile = mkOption {
      type = types.nullOr glib.secretPathType;
      default = null;
      defaultText = literalMD "auto: with `configurePostgres` the local database over its Unix socket (`databaseUrl`), else SQLite in `baseDir`";
      description = "Override the PostgreSQL connection string file (a URL with a password belongs in a file).";
    };
    databaseUrl = mkOption {
      type = types.nullOr types.str;
      default = if cfg.configurePostgres && cfg.databaseUrlFile == null then localDatabaseUrl else null;
      defaultText = literalExpression ''if configurePostgres then "${localDatabaseUrl}" else null'';
      description = "A database URL without a secret (`GRADIENT_DATABASE_URL`); `databaseUrlFile` wins.";
    };
    databaseMaxConnections = opt types.ints.positive 32 "Max connections in the scheduler / worker / cache pool.";
    databaseMinConnections = opt types.ints.unsigned 2 "Min connections kept warm in that pool.";
    databaseWebMaxConnections = opt types.ints.positive 16 "Max connections in the HTTP pool.";
    databaseWebMinConnections = opt types.ints.unsigned 1 "Min connections kept warm in the HTTP pool.";
    reportErrors = opt types.bool false "Send errors to Sentry.";
    discoverable = opt types.bool true "Accept incoming /proto WebSocket connections from workers.";
    configurePostgres = opt types.bool false "Create a local PostgreSQL database and role `gradient` and connect over the Unix socket.";

    narStore = nullOpt types.str "Where NARs are kept: `file:///path` or `s3://bucket/prefix` (`null`: `<baseDir>/nars`).";
    s3 = {
      endpoint = nullOpt types.str "S3 endpoint URL (`null`: AWS).";
      region = opt types.str "us-east-1" "S3 region.";
      accessKeyId = nullOpt types.str "S3 access key id.";
      secretAccessKeyFile = secretOpt "File holding the S3 secret access key.";
      pathStyle = opt types.bool true "Path-style S3 URLs (MinIO, Garage, moto).";
    };
    localWorker = {
      id = nullOpt types.str "Id (v4 UUID) of a worker registered in every organization created (with `tokenFile`).";
      tokenFile = secretOpt "Token file of that worker (its peers file then holds `*:<token>`).";
    };

    settings = {
      sentryDsn = nullOpt types.str "Sentry DSN used when `reportErrors` is true.";
      maxProtoConnections = opt types.ints.positive 256 "Max simultaneous worker WebSocket connections.";
      workerHeartbeatSecs = opt types.ints.positive 10 "Seconds between heartbeats on the worker link.";
      workerLostAfterSecs = opt types.ints.positive 30 "A worker silent this long is lost; its jobs go back to the queue.";
      keepEvaluations = opt types.ints.unsigned 5 "Number of evaluations kept per project.";
      supersedeEvaluations = opt types.bool true "A push supersedes the still-running evaluations of its branch.";
      maxRequestSize = opt types.ints.positive 2097152 "Max HTTP request body in bytes for most endpoints.";
      logLevel = {
        default = opt logLevel "info" "Log level.";
        cache = nullOpt logLevel "Cache log level override (null inherits default).";
        web = nullOpt logLevel "Web log level override (null inherits default).";
        proto = nullOpt logLevel "Proto log level override (null inherits default).";
      };
      enableRegistration = opt types.bool true "Allow new user self-registration.";
      deleteState = opt types.bool true "Delete managed entities that left `state` (false: they become unmanaged).";
      cacheTtlHours = opt types.ints.unsigned 336 "TTL in hours for cached NARs not fetched recently (0 = disabled).";
      cacheGcIntervalSecs = opt types.ints.positive 3600 "Seconds between garbage collection sweeps of the caches.";
      narStorageOpenTimeoutSecs = opt types.ints.positive 60 "Max seconds to open a NAR object stream.";
      narSendChunkTimeoutSecs = opt types.ints.positive 30 "Max seconds an outbound NarPush chunk may wait.";
      maxConcurrentNarServes = opt types.ints.positive 8 "Max NAR-serving tasks per worker connection.";
      maxNarBufferBytes = opt types.ints.positive 10737418240 "Max bytes a proto session may hold in upload buffers.";
      trustedProxies = opt types.str "127.0.0.1/32,::1/128" "Comma-separated CIDRs permitted to set X-Forwarded-For.";
      localIps = opt types.str "10.0.0.0/8" "Comma-separated CIDRs that receive each cache's local_priority.";
      allowLocalRepositories = opt types.bool false "Accept file://, loopback and link-local repositories and forge APIs.";
      denyPrivateNetworks = opt types.bool false "Refuse repositories and forge APIs on private networks too.";
    };

    oidc = {
      enable = opt types.bool false "Sign in with an OpenID Provider (authorization code flow with PKCE; callback `<publicUrl>/api/v1/auth/oidc/callback`).";
      required = opt types.bool false "Disable username/password login and registration and require OIDC for all users; the server refuses to start when the provider cannot be discovered.";
      clientId = nullOpt types.str "OIDC client id.";
      clientSecretFile = secretOpt "File holding the OIDC client secret (null: a public client, PKCE only).";
      discoveryUrl = nullOpt types.str "Issuer URL (`/.well-known/openid-configuration` is appended); the provider's metadata must name exactly this issuer.";
      scopes = opt (types.listOf types.str) [ "openid" "email" "profile" ] "Scopes requested (`email` is needed for new accounts).";
      iconUrl = nullOpt types.str "Optional http(s) URL of the provider's logo, shown on the sign-in button.";
    };
    email = {
      enable = opt types.bool false "Send email: address verification, password reset, and mail when a project starts failing or is fixed.";
      requireVerification = opt types.bool false "Refuse password login until the account's address is verified (needs enable).";
      smtpHost = nullOpt types.str "SMTP host (required with enable).";
      smtpPort = opt types.port 587 "SMTP port: 465 speaks TLS at once; any other port must offer STARTTLS (except on a loopback host).";
      smtpUsername = nullOpt types.str "SMTP user to log in as (AUTH); null sends without logging in.";
      smtpPasswordFile = secretOpt "File holding the SMTP password (passed as a systemd credential).";
      fromAddress = nullOpt types.str "Sender address (required with enable).";
      fromName = opt types.str "Gradient" "Sender name.";
    };
    githubApp = {
      enable = opt types.bool false "Use a GitHub App for webhooks and commit statuses.";
      appId = nullOpt types.ints.positive "The App's id.";
      privateKeyFile = secretOpt "The App's private key (PEM).";
      webhookSecretFile = secretOpt "The App's webhook secret.";
      clientId = nullOpt types.str "The App's OAuth client id (links installations to organizations).";
      clientSecretFile = secretOpt "The App's OAuth client secret.";
      apiUrl = opt types.str "https://api.github.com" "GitHub's API (`https://host/api/v3` for GitHub Enterprise Server).";
      webUrl = nullOpt types.str "GitHub's web URL (`null`: derived from `apiUrl`).";
    };

    reverseProxy = {
      nginx = {
        enable = opt types.bool false "Whether to enable nginx as the reverse proxy.";
        enableACME = mkOption {
          type = types.bool;
          default = cfg.reverseProxy.nginx.useACMEHost == null;
          defaultText = literalExpression "useACMEHost == null";
          description = "Get a certificate for `domain` with ACME (services.nginx.virtualHosts.<name>.enableACME).";
        };
        forceSSL = opt types.bool true "Redirect HTTP to HTTPS (services.nginx.virtualHosts.<name>.forceSSL).";
        useACMEHost = nullOpt types.str "Passed to services.nginx.virtualHosts.<name>.useACMEHost.";
        extraConfig = opt types.lines "" "nginx directives appended to the virtual host's server block.";
      };
      caddy = {
        enable = opt types.bool false "Whether to enable caddy as the reverse proxy.";
        useACMEHost = nullOpt types.str "Passed directly to services.caddy.virtualHosts.<name>.useACMEHost.";
        extraConfig = opt types.lines "" "Caddy config written to services.caddy.virtualHosts.<name>.extraConfig after the reverse proxy setup.";
      };
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      internal = true;
      description = "The GRADIENT_* variables of gradient-server.service, secrets as `%d/<credential>` paths.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.gradient.environment =
        glib.environmentFor cfg plainOptions
        // credentials.environment
        // lib.optionalAttrs cfg.frontend.enable { GRADIENT_FRONTEND_DIR = frontendRoot; }
        # Interpolated: a path literal becomes its copy in the store, a string stays the path it names.
        // lib.optionalAttrs (cfg.caFile != null) { GRADIENT_CA_FILE = "${cfg.caFile}"; };

      assertions = [
        {
          assertion = !(cfg.reverseProxy.nginx.enable && cfg.reverseProxy.caddy.enable);
          message = "services.gradient.reverseProxy: enable nginx or caddy, not both";
        }
        {
          assertion = (cfg.localWorker.id == null) == (cfg.localWorker.tokenFile == null);
          message = "services.gradient.localWorker: set both id and tokenFile, or neither";
        }
        {
          assertion =
            !cfg.githubApp.enable
            || (cfg.githubApp.appId != null && cfg.githubApp.privateKeyFile != null && cfg.githubApp.webhookSecretFile != null);
          message = "services.gradient.githubApp: enable needs appId, privateKeyFile and webhookSecretFile";
        }
        {
          assertion = !cfg.email.enable || (cfg.email.smtpHost != null && cfg.email.fromAddress != null);
          message = "services.gradient.email: enable needs smtpHost and fromAddress";
        }
        {
          assertion = !cfg.email.requireVerification || cfg.email.enable;
          message = "services.gradient.email: requireVerification needs enable (nobody could verify an address otherwise)";
        }
        {
          assertion = !cfg.oidc.enable || (cfg.oidc.clientId != null && cfg.oidc.discoveryUrl != null);
          message = "services.gradient.oidc: enable needs clientId and discoveryUrl";
        }
        {
          assertion = !cfg.oidc.required || cfg.oidc.enable;
          message = "services.gradient.oidc: required needs enable (nobody could sign in otherwise)";
        }
      ];

      users.users.gradient = {
        isSystemUser = true;
        group = "gradient";
        home = cfg.baseDir;
        description = "Gradient server";
      };
      users.groups.gradient = { };
      # A baseDir outside /var/lib is not the unit's StateDirectory: created here instead.
      systemd.tmpfiles.rules = lib.optional (
        !lib.hasPrefix "/var/lib/" cfg.baseDir
      ) "d ${cfg.baseDir} 0700 gradient gradient - -";

      systemd.services.gradient-server = {
        description = "Gradient CI server";
        wantedBy = [ "multi-user.target" ];
        # The database and role exist once postgresql.target is reached (NixOS 25.11 and later create them in
        # postgresql-setup.service; before, postgresql.service did).
        wants = [ "network-online.target" ] ++ lib.optional cfg.configurePostgres "postgresql.target";
        after = [ "network-online.target" ] ++ lib.optionals cfg.configurePostgres [ "postgresql.service" "postgresql.target" ];
        requires = lib.optional cfg.configurePostgres "postgresql.service";
        # git polls repositories (`git ls-remote`), over https or ssh.
        path = [ pkgs.git pkgs.openssh ];
        environment = cfg.environment;
        serviceConfig = glib.hardening // {
          ExecStart = "${cfg.package}/bin/gradient-server";
          # SIGHUP re-applies the state file without a restart.
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          User = "gradient";
          Group = "gradient";
          LoadCredential = credentials.loadCredential ++ cfg.state.credentials;
          Restart = "on-failure";
          RestartSec = 5;
          StateDirectory = mkIf (lib.hasPrefix "/var/lib/" cfg.baseDir) (lib.removePrefix "/var/lib/" cfg.baseDir);
          StateDirectoryMode = "0700";
          ReadWritePaths = mkIf (!lib.hasPrefix "/var/lib/" cfg.baseDir) [ cfg.baseDir ];
          WorkingDirectory = cfg.baseDir;
          UMask = "0077";
          # Hardening beyond glib.hardening: the server needs the network, its data directory and nothing else.
          ProtectClock = true;
          ProtectProc = "invisible";
          RestrictNamespaces = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
        };
      };
    }

    (mkIf cfg.configurePostgres {
      services.postgresql = {
        enable = true;
        ensureDatabases = [ "gradient" ];
        ensureUsers = [
          {
            name = "gradient";
            ensureDBOwnership = true;
          }
        ];
      };
    })

    (mkIf cfg.reverseProxy.nginx.enable {
      services.nginx = {
        enable = true;
        recommendedProxySettings = mkDefault true;
        virtualHosts.${cfg.domain} = {
          inherit (cfg.reverseProxy.nginx) enableACME forceSSL useACMEHost extraConfig;
          locations = {
            # The API and the binary cache: pushes of any size go straight to the server (no body limit here,
            # the server enforces its own), unbuffered both ways so NARs and live logs stream.
            "/api/" = {
              proxyPass = upstream;
              extraConfig = ''
                client_max_body_size 0;
                proxy_request_buffering off;
                proxy_buffering off;
                proxy_read_timeout 1h;
              '';
            };
            "/cache/" = {
              proxyPass = upstream;
              extraConfig = ''
                client_max_body_size 0;
                proxy_request_buffering off;
                proxy_buffering off;
                proxy_read_timeout 1h;
                proxy_send_timeout 1h;
              '';
            };
            # The worker link: a WebSocket that lives for days.
            "= /proto" = {
              proxyPass = upstream;
              proxyWebsockets = true;
              extraConfig = ''
                proxy_buffering off;
                proxy_read_timeout 7d;
                proxy_send_timeout 7d;
              '';
            };
            # Everything else: the server, which serves the web UI (GRADIENT_FRONTEND_DIR, when frontend.enable)
            # with its single-page fallback and cache headers, and answers 404 otherwise.
            "/".proxyPass = upstream;
          };
        };
      };
    })

    (mkIf cfg.reverseProxy.caddy.enable {
      services.caddy = {
        enable = true;
        virtualHosts.${cfg.domain} = {
          inherit (cfg.reverseProxy.caddy) useACMEHost;
          # Everything goes to the server (the API, the cache, /proto's WebSocket upgrade, the web UI when
          # frontend.enable). Responses are flushed as they come (NARs, live logs); Caddy buffers no request
          # body unless told to (`request_buffers`), so pushes stream, sets no body limit, and keeps an
          # upgraded WebSocket open without a timeout.
          extraConfig = ''
            reverse_proxy ${upstream} {
              flush_interval -1
            }
          ''
          + cfg.reverseProxy.caddy.extraConfig;
        };
      };
    })

    (mkIf anyProxy {
      networking.firewall.allowedTCPPorts = [ 80 443 ];
    })
  ]);
}

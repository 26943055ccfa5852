# A NixOS VM test for machines with nixpkgs and KVM (the flake's checks.<system>.nixos-module):
# `nix build .#checks.x86_64-linux.nixos-module`. It cannot run on this project's CI machines, whose checks
# are tests/e2e/nixos.rs; it was written without being run there.
{ pkgs, module }:
pkgs.testers.runNixOSTest {
  name = "gradient-nixos-module";
  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ module ];
      virtualisation.memorySize = 2048;
      # Secrets outside the store, written before the server starts (as agenix or sops-nix would).
      systemd.services.gradient-test-secrets = {
        wantedBy = [ "multi-user.target" ];
        before = [
          "gradient-server.service"
          "gradient-worker.service"
        ];
        requiredBy = [
          "gradient-server.service"
          "gradient-worker.service"
        ];
        serviceConfig.Type = "oneshot";
        path = [ pkgs.openssl ];
        script = ''
          install -d -m 0700 /run/secrets
          openssl rand -base64 48 > /run/secrets/jwt
          openssl rand -base64 48 > /run/secrets/crypt
          echo "correct horse battery staple" > /run/secrets/alice
          token=$(openssl rand -base64 48)
          echo "$token" > /run/secrets/local-worker-token
          echo "*:$token" > /run/secrets/local-worker-peers
        '';
      };
      services.gradient = {
        enable = true;
        configurePostgres = true;
        reverseProxy.nginx = {
          enable = true;
          enableACME = false;
          forceSSL = false;
        };
        domain = "gradient.test";
        publicUrl = "http://gradient.test";
        jwtSecretFile = "/run/secrets/jwt";
        cryptSecretFile = "/run/secrets/crypt";
        localWorker = {
          id = "550e8400-e29b-41d4-a716-446655440001";
          tokenFile = "/run/secrets/local-worker-token";
        };
        state = {
          users.alice = {
            email = "alice@example.com";
            password_file = "/run/secrets/alice";
          };
          organizations.acme.created_by = "alice";
        };
        worker = {
          enable = true;
          serverUrl = "ws://127.0.0.1:3000/proto";
          workerId = "550e8400-e29b-41d4-a716-446655440001";
          peersFile = "/run/secrets/local-worker-peers";
          capabilities = {
            fetch = true;
            eval = true;
            build = true;
          };
          settings.probeSubstituters = false;
        };
      };
      networking.hosts."127.0.0.1" = [ "gradient.test" ];
      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    import json
    machine.wait_for_unit("gradient-server.service")
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:3000/api/v1/health")
    # Through nginx, as a client would.
    machine.succeed("curl -sf http://gradient.test/api/v1/health")
    # The declared user logs in with her password file; the declared organization is managed.
    jwt = json.loads(machine.succeed(
        "curl -sf -X POST http://gradient.test/api/v1/auth/basic/login -H 'Content-Type: application/json' "
        "-d '{\"loginname\":\"alice\",\"password\":\"correct horse battery staple\"}'"
    ))["message"]
    org = json.loads(machine.succeed(f"curl -sf http://gradient.test/api/v1/orgs/acme -H 'Authorization: Bearer {jwt}'"))
    assert org["message"]["managed"], org
    # No secret in the units' environment.
    machine.fail("systemctl show gradient-server -p Environment | grep /run/secrets")
    machine.wait_for_unit("gradient-worker.service")
    # A reload re-applies the state (SIGHUP) and keeps the server running.
    machine.succeed("systemctl reload gradient-server")
    machine.wait_until_succeeds("journalctl -u gradient-server | grep -q 'SIGHUP: applying'")
    machine.succeed("systemctl is-active gradient-server")
  '';
}

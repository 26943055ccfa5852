# The NixOS option sets the module writes, declared loosely so the tests can read what it puts there (NixOS
# itself is not available here: only nixpkgs' lib). Also a fake `pkgs` with the few functions the module
# calls; its derivations are attribute sets with an outPath, never built.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  loose = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  } // extra;
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.anything;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    systemd.services = loose;
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    users.users = loose;
    users.groups = loose;
    services.postgresql = loose;
    services.nginx = loose;
    services.caddy = loose;
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    nix.settings = loose;
    nix.package = mkOption {
      type = types.package;
      default = fakeDrv "nix" { };
    };
    environment.etc = loose;
  };
  config._module.args.pkgs = {
    git = fakeDrv "git" { };
    openssh = fakeDrv "openssh" { };
    coreutils = fakeDrv "coreutils" { };
    writeText = name: text: fakeDrv name { inherit text; };
    runCommand = name: env: script: fakeDrv name { inherit env script; };
  };
}

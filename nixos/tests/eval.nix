# Evaluates the module with nixpkgs' real lib.evalModules for one configuration of cases.nix and answers
# what the tests inspect. Run: nix-instantiate --eval --strict --json --readonly-mode nixos/tests/eval.nix \
#   --arg lib 'import ../shared/nixpkgs-lib/lib' --argstr case minimal
{
  lib,
  case,
}:
let
  cases = import ./cases.nix;
  # The flake's nixosModules.default, its outputs called without nixpkgs: the module must not need it.
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs = throw "nixosModules.default needed nixpkgs";
  };
  eval = lib.evalModules {
    modules = [
      (if case == "flake" then flake.nixosModules.default else ../module.nix)
      ./stubs.nix
      cases.${if case == "flake" then "minimal" else case}
    ];
  };
  c = eval.config;
  gradient = c.services.gradient;
  # Every option under services.gradient with its default as the documentation shows it.
  docs = lib.filter (o: lib.hasPrefix "services.gradient." o.name) (lib.optionAttrSetToDocList eval.options);
in
if case == "options" then
  map (o: {
    inherit (o) name type;
    default = o.default or null;
    hasDefault = o ? default;
  }) docs
else
  {
    assertions = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
    inherit (c) warnings users networking;
    services = {
      inherit (c.services) postgresql nginx caddy;
    };
    systemd = {
      services = lib.mapAttrs (
        _: s: builtins.removeAttrs s [ "path" ] // { path = map (p: p.name) (s.path or [ ]); }
      ) c.systemd.services;
      tmpfiles = c.systemd.tmpfiles.rules;
    };
    nix.settings = c.nix.settings;
    etc = lib.mapAttrs (_: e: {
      source = e.source.outPath;
      text = e.source.text or null;
      script = e.source.script or null;
      env = e.source.env or null;
    }) c.environment.etc;
  }
  // lib.optionalAttrs gradient.enable {
    state = gradient.state.rendered;
  }

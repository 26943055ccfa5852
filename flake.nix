{
  description = "Gradient, a Nix CI system: server, worker, web UI and their NixOS module";

  # Only the packages need nixpkgs; the NixOS modules use the pkgs of the system they are imported into.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The packages of this flake as the modules' defaults (for the system the module is evaluated for).
      serverPackages =
        { lib, pkgs, ... }:
        let
          own = self.packages.${pkgs.stdenv.hostPlatform.system};
        in
        {
          services.gradient.package = lib.mkDefault own.gradient-server;
          services.gradient.frontend.package = lib.mkDefault own.gradient-frontend;
        };
      workerPackages =
        { lib, pkgs, ... }:
        {
          services.gradient.worker.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.gradient-worker;
        };
    in
    {
      nixosModules = {
        # services.gradient (server, database, reverse proxy, web UI, state) and services.gradient.worker.
        default = {
          imports = [
            ./nixos/module.nix
            serverPackages
            workerPackages
          ];
        };
        gradient = self.nixosModules.default;
        # services.gradient.worker alone, for build machines.
        gradient-worker = {
          imports = [
            ./nixos/worker.nix
            workerPackages
          ];
        };
      };

      # The NixOS module in a VM (needs KVM; not run on the project's CI, see nixos/tests/vm.nix).
      checks = nixpkgs.lib.genAttrs [ "x86_64-linux" ] (system: {
        nixos-module = import ./nixos/tests/vm.nix {
          pkgs = nixpkgs.legacyPackages.${system};
          module = self.nixosModules.default;
        };
      });

      packages = forAllSystems (
        pkgs:
        let
          rust =
            name:
            pkgs.rustPlatform.buildRustPackage {
              pname = name;
              version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
              src = nixpkgs.lib.cleanSource ./.;
              cargoLock.lockFile = ./Cargo.lock;
              cargoBuildFlags = [
                "-p"
                name
              ];
              # The test suite needs PostgreSQL, Nix and the network: scripts/test runs it.
              doCheck = false;
              meta.mainProgram = name;
            };
        in
        {
          gradient-server = rust "gradient-server";
          gradient-worker = rust "gradient-worker";
          # The web UI's static files in share/gradient-frontend (built from web/ with its package-lock.json;
          # the build generates its API client from ../openapi, so the whole tree is the source).
          gradient-frontend = pkgs.buildNpmPackage {
            pname = "gradient-frontend";
            version = "0.1.0";
            src = nixpkgs.lib.cleanSource ./.;
            sourceRoot = "source/web";
            npmDeps = pkgs.importNpmLock { npmRoot = ./web; };
            npmConfigHook = pkgs.importNpmLock.npmConfigHook;
            installPhase = ''
              runHook preInstall
              mkdir -p $out/share
              cp -r dist $out/share/gradient-frontend
              runHook postInstall
            '';
          };
          default = self.packages.${pkgs.stdenv.hostPlatform.system}.gradient-server;
        }
      );
    };
}

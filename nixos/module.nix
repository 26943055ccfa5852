# The Gradient NixOS module: services.gradient (the server, its database, reverse proxy, web UI and
# declarative state) and services.gradient.worker. It needs nothing but the NixOS it is imported into;
# the packages come from the flake (flake.nix sets their defaults) or from the user.
{
  imports = [
    ./server.nix
    ./worker.nix
  ];
}

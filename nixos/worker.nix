# services.gradient.worker: a gradient-worker dialling a server's /proto, doing its Nix work through the
# local Nix daemon. Importable alone on a build machine (the flake's nixosModules.gradient-worker).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption mkEnableOption types mkIf;
  glib = import ./lib.nix { inherit lib; };
  cfg = config.services.gradient.worker;

  logLevel = types.enum [ "trace" "debug" "info" "warn" "error" ];
  opt =
    type: default: description:
    mkOption { inherit type default description; };
  nullOpt = type: description: opt (types.nullOr type) null description;

  stateDir = "/var/lib/gradient-worker";
  # The options passed as plain variables, by the naming rule.
  plainOptions = [
    "serverUrl"
    "discoverable"
    "workerId"
    "capabilities.fetch"
    "capabilities.eval"
    "capabilities.build"
    "capabilities.sign"
    "capabilities.federate"
    "settings.maxConcurrentBuilds"
    "settings.evalWorkers"
    "settings.maxConcurrentEvaluations"
    "settings.maxEvaluationsPerWorker"
    "settings.maxNixdaemonConnections"
    "settings.probeSubstituters"
    "settings.gcrootsDir"
    "settings.logLevel.default"
    "settings.logLevel.eval"
    "settings.logLevel.build"
    "settings.logLevel.proto"
  ];
  # The listener's options: passed to a discoverable worker only (a dialing worker refuses them at start).
  listenerOptions = {
    listenAddr = "127.0.0.1";
    port = 3100;
    "settings.maxProtoConnections" = 16;
  };
  # Those a dialing worker has set to something else than their default: they would have no effect.
  unusedListenerOptions = lib.filter (o: glib.valueAt cfg o != listenerOptions.${o}) (
    lib.attrNames listenerOptions
  );
  secretOptions = [ "peersFile" ];
  credentials = glib.credentialsFor cfg secretOptions;

  # nginx in front of a discoverable worker's listener, at `domain`: TLS (ACME, forceSSL) when useTls.
  proxied = cfg.discoverable && cfg.domain != null;
in
{
  options.services.gradient.worker = {
    enable = mkEnableOption "a Gradient worker (services.gradient.worker)";
    package = mkOption {
      type = types.package;
      description = "The gradient-worker package (the flake's `packages.<system>.gradient-worker`).";
    };
    serverUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "wss://gradient.example.com/proto";
      description = "WebSocket URL of the server's /proto endpoint (required unless `discoverable`: a discoverable worker is dialed by the server and dials nothing).";
    };
    workerId = nullOpt types.str "Override the worker UUID; when null, read from the state directory's `worker-id` or generated on first start.";
    peersFile = opt (types.nullOr glib.secretPathType) null "Path to the peers file (`peer_id:token` per line, `*` = any peer).";
    caFile = nullOpt types.path ''
      PEM file of extra CA certificates the worker trusts besides the webpki roots and the system's bundle:
      for a `wss://` server URL and https caches whose certificates come from a private CA (not a secret: a
      Nix path literal is copied to the store). The worker's own Nix commands trust it too; the Nix daemon
      does not: add the CA to `security.pki.certificateFiles` for it (which the worker then trusts as well,
      making this option unnecessary).
    '';
    useTls = opt types.bool true "Enable TLS (ACME + forceSSL) on the nginx vhost of a discoverable worker with a `domain` (the server then dials `wss://<domain>/proto`).";
    discoverable = opt types.bool false "Accept incoming connections from the server: the worker listens at `listenAddr`:`port` (`/proto`) and the server dials the URL it is registered with (`serverUrl` must be null).";
    listenAddr = opt types.str "127.0.0.1" "Bind address for the worker listener (an IP address).";
    port = opt types.port 3100 "Listener port when discoverable is enabled.";
    domain = nullOpt types.str ''
      With `discoverable`: the name of an nginx virtual host proxying `/proto` to the listener (TLS with ACME
      when `useTls`); register the worker with `wss://<domain>/proto` (or `ws://` without TLS). Null: no nginx.
    '';
    capabilities = {
      fetch = opt types.bool false "Prefetch flake inputs.";
      eval = opt types.bool false "Run Nix evaluations.";
      build = opt types.bool false "Execute Nix builds.";
      sign = opt types.bool false "Sign store paths. Refused at start: the server signs every path with its cache's key as it is pushed; a worker holds no signing key.";
      federate = opt types.bool false "Act as a federation relay (requires discoverable). Refused at start: Gradient has no federation of servers to relay between.";
    };
    settings = {
      maxConcurrentBuilds = opt types.ints.positive 100 "Parallel build slots.";
      evalWorkers = opt types.ints.positive 1 "Number of evaluator subprocesses: each runs one evaluation at a time (more wait for one), splitting its attributes between this many `nix eval` processes at once.";
      maxConcurrentEvaluations = opt types.ints.positive 1 "Parallel evaluations.";
      maxEvaluationsPerWorker = opt types.ints.unsigned 20 "Recycle evaluator subprocess after N jobs (0 = never): an evaluator subprocess is replaced by a fresh one after this many evaluations.";
      maxNixdaemonConnections = opt types.ints.positive 32 "Nix processes (each a session with the nix-daemon) the worker runs at once: builds, pushes, evaluations and queries together.";
      maxProtoConnections = opt types.ints.positive 16 "Max simultaneous WebSocket connections in discoverable mode; beyond them the worker answers 503 with Retry-After.";
      gcrootsDir = opt types.str "/nix/var/nix/gcroots/gradient" "Directory for worker-held indirect GC roots; empty string disables.";
      probeSubstituters = opt types.bool true "Ask Nix's substituters at start and leave out those that do not answer.";
      logLevel = {
        default = opt logLevel "info" "Worker log level.";
        eval = nullOpt logLevel "Evaluation log level override (null inherits default).";
        build = nullOpt logLevel "Build log level override (null inherits default).";
        proto = nullOpt logLevel "Protocol (link to the server) log level override (null inherits default).";
      };
    };
    environment = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      internal = true;
      description = "The GRADIENT_* variables of gradient-worker.service, secrets as `%d/<credential>` paths.";
    };
  };

  config = mkIf cfg.enable {
    services.gradient.worker.environment =
      glib.environmentFor cfg (plainOptions ++ lib.optionals cfg.discoverable (lib.attrNames listenerOptions))
      // credentials.environment
      # Interpolated: a path literal becomes its copy in the store, a string stays the path it names.
      // lib.optionalAttrs (cfg.caFile != null) { GRADIENT_CA_FILE = "${cfg.caFile}"; }
      // {
        GRADIENT_STATE_DIR = stateDir;
      };

    assertions = [
      {
        assertion = (cfg.serverUrl != null) != cfg.discoverable;
        message = "services.gradient.worker: set serverUrl (the worker dials the server, e.g. wss://gradient.example.com/proto) or discoverable = true (the server dials the worker), one of the two";
      }
    ];
    warnings =
      lib.optional (!proxied && !cfg.useTls) "services.gradient.worker.useTls has an effect only on the nginx virtual host of a discoverable worker with a domain"
      ++ lib.optional (
        !cfg.discoverable && unusedListenerOptions != [ ]
      ) "services.gradient.worker: ${lib.concatStringsSep ", " unusedListenerOptions} have an effect only on a discoverable worker (this one dials serverUrl)";

    services.nginx = mkIf proxied {
      enable = true;
      recommendedProxySettings = true;
      virtualHosts.${cfg.domain} = {
        enableACME = cfg.useTls;
        forceSSL = cfg.useTls;
        locations."/proto" = {
          proxyPass = "http://${if lib.hasInfix ":" cfg.listenAddr then "[${cfg.listenAddr}]" else cfg.listenAddr}:${toString cfg.port}";
          proxyWebsockets = true;
        };
      };
    };

    users.users.gradient-worker = {
      isSystemUser = true;
      group = "gradient-worker";
      home = stateDir;
      description = "Gradient worker";
    };
    users.groups.gradient-worker = { };

    # The worker imports NARs and passes --option substituters to Nix: both need a trusted user of the
    # Nix daemon. Builds themselves run in the daemon's sandbox as its build users.
    # root is listed too: a definition here replaces the option's default ([ "root" ]).
    nix.settings.trusted-users = [
      "root"
      "gradient-worker"
    ];

    systemd.tmpfiles.rules = lib.optional (
      cfg.settings.gcrootsDir != ""
    ) "d ${cfg.settings.gcrootsDir} 0755 gradient-worker gradient-worker - -";

    systemd.services.gradient-worker = {
      description = "Gradient CI worker";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      requires = [ "nix-daemon.socket" ];
      # The nix CLI (talking to the daemon) and git for flake inputs.
      path = [ config.nix.package pkgs.git pkgs.openssh ];
      environment = cfg.environment // {
        # Nix's own caches (fetched flakes, evaluation cache) go to the state directory.
        HOME = stateDir;
        XDG_CACHE_HOME = "${stateDir}/.cache";
        NIX_REMOTE = "daemon";
      };
      serviceConfig = glib.hardening // {
        ExecStart = "${cfg.package}/bin/gradient-worker";
        User = "gradient-worker";
        Group = "gradient-worker";
        LoadCredential = credentials.loadCredential;
        Restart = "always";
        RestartSec = 5;
        StateDirectory = "gradient-worker";
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;
        UMask = "0077";
        # Hardening beyond glib.hardening that keeps Nix working: the daemon does the privileged part.
        CapabilityBoundingSet = "";
        # The daemon's socket, and the GC roots the worker links through it.
        ReadWritePaths = [ "/nix/var/nix/daemon-socket" ] ++ lib.optional (cfg.settings.gcrootsDir != "") cfg.settings.gcrootsDir;
      };
    };
  };
}

# services.gradient.state: declarative users, organizations, roles, projects, caches, API keys, worker
# registrations and forge integrations, rendered to the JSON document of docs/state.md and handed to the
# server as GRADIENT_STATE_FILE. Secrets stay files: each `*_file` becomes a systemd credential of
# gradient-server.service and the document names it under /run/credentials/gradient-server.service/.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types mkIf;
  glib = import ./lib.nix { inherit lib; };
  cfg = config.services.gradient;
  credentialsDir = "/run/credentials/gradient-server.service";

  opt =
    type: default: description:
    mkOption { inherit type default description; };
  req = type: description: mkOption { inherit type description; };
  nullOpt = type: description: opt (types.nullOr type) null description;
  secretFile = glib.secretPathType;
  nameOpt = name: opt types.str name "Name (defaults to the attribute name).";

  entry = options: types.submodule ({ name, ... }: { options = options name; });

  users = entry (name: {
    username = opt types.str name "Login name (defaults to the attribute name).";
    name = nullOpt types.str "Display name (null: the username).";
    email = req types.str "Email address (unique).";
    password_file = nullOpt secretFile "File holding the password (plain, or an argon2id PHC string); null: no password login.";
    email_verified = opt types.bool true "Whether the address counts as verified.";
  });
  organizations = entry (name: {
    name = nameOpt name;
    display_name = nullOpt types.str "Display name (null: the name).";
    description = opt types.str "" "Description.";
    public = opt types.bool false "Readable by everyone.";
    created_by = req types.str "Username recorded as the creator (an Admin unless `members` says otherwise).";
    members = opt (types.attrsOf types.str) { } "username → role (Admin, Write, View or a custom role): the whole membership.";
    push_cache = nullOpt types.str "Cache the organization's jobs push to (it must list this organization).";
  });
  roles = entry (name: {
    name = nameOpt name;
    organization = req types.str "The organization this role belongs to.";
    permissions = req (types.nonEmptyListOf types.str) "Permission identifiers the role grants.";
  });
  projects = entry (name: {
    name = nameOpt name;
    organization = req types.str "The organization's name.";
    display_name = nullOpt types.str "Display name (null: the name).";
    description = opt types.str "" "Description.";
    repository = req types.str "Clone URL.";
    branch = nullOpt types.str "Branch to evaluate (null: the remote's default branch).";
    wildcard = opt types.str "packages.*.*, checks.*.*" "Attribute patterns.";
    keep_evaluations = nullOpt types.ints.positive "Evaluations kept (null: settings.keepEvaluations).";
    poll_interval_secs = nullOpt types.ints.positive "Polling interval (null: webhooks only).";
    schedule = nullOpt types.str "Cron expression in UTC evaluating the branch head at those times, new commit or not (null: none).";
    active = opt types.bool true "Whether the project is evaluated.";
    pull_requests = opt types.bool true "Whether pull requests from the project's own repository are evaluated.";
    fork_pull_requests = opt types.bool false "Whether pull requests from forks are evaluated (they run their code on the workers).";
    created_by = req types.str "Username recorded as the creator.";
    flake_input_overrides = opt (types.attrsOf (
      types.submodule {
        options = {
          url = nullOpt types.str "A flake ref replacing the input's URL.";
          keep_url = nullOpt types.bool "true: update the input keeping its URL.";
        };
      }
    )) { } "Per-input overrides: exactly one of url or keep_url = true each.";
  });
  caches = entry (name: {
    name = nameOpt name;
    display_name = nullOpt types.str "Display name (null: the name).";
    description = opt types.str "" "Description.";
    public = opt types.bool false "Readable without credentials.";
    priority = opt types.int 30 "Priority of nix-cache-info.";
    local_priority = nullOpt types.int "Priority announced to settings.localIps.";
    compression = opt (types.enum [ "zstd" "xz" "none" ]) "zstd" "Compression of NARs.";
    signing_key_file = nullOpt secretFile "File holding the ed25519 secret key (`nix key generate-secret`); null: generated.";
    created_by = req types.str "Username of the cache's owner.";
    organizations = opt (types.listOf types.str) [ ] "Organizations granted the cache.";
  });
  api_keys = entry (name: {
    name = nameOpt name;
    key_file = req secretFile "File holding the whole token (`GRAD…`).";
    owned_by = req types.str "Username that owns the key.";
    permissions = nullOpt (types.listOf types.str) "The only permissions the key may use (null: not limited).";
    organization = nullOpt types.str "Organization the key is pinned to (null: unscoped).";
  });
  workers = entry (name: {
    worker_id = req types.str "The worker's id (a v4 UUID).";
    organizations = req (types.nonEmptyListOf types.str) "Organizations the worker is registered in.";
    token_file = req secretFile "File holding the registration's token (`openssl rand -base64 48`).";
    url = nullOpt types.str "A listening worker's /proto URL (ws:// or wss://), which the server dials; null: the worker dials the server.";
  });
  integrations = entry (name: {
    organization = req types.str "The organization's name.";
    kind = req (types.enum [ "inbound" "outbound" ]) "inbound: the webhook secret; outbound: where commit statuses go.";
    forge_type = nullOpt (types.enum [ "github" "gitea" "forgejo" "gitlab" ]) "The forge (required for outbound).";
    secret_file = nullOpt secretFile "File holding the webhook secret (inbound).";
    endpoint_url = nullOpt types.str "The forge's API base URL (outbound).";
    access_token_file = nullOpt secretFile "File holding the forge access token (outbound).";
  });

  # collection → (its secret fields, the credential name's prefix)
  secretFields = {
    users = [ "password_file" ];
    caches = [ "signing_key_file" ];
    api_keys = [ "key_file" ];
    workers = [ "token_file" ];
    integrations = [ "secret_file" "access_token_file" ];
  };
  credentialPrefix = {
    users = "state-user";
    caches = "state-cache";
    api_keys = "state-api-key";
    workers = "state-worker";
    integrations = "state-integration";
  };
  credentialOf = collection: key: "${credentialPrefix.${collection}}-${key}";

  collections = [ "users" "organizations" "roles" "projects" "caches" "api_keys" "workers" "integrations" ];

  # Every secret file of the document: { credential, path } (an integration has one of its two files).
  stateCredentials = lib.concatMap (
    collection:
    lib.concatLists (
      lib.mapAttrsToList (
        key: e:
        lib.concatMap (
          field:
          lib.optional (e.${field} != null) {
            credential = credentialOf collection key;
            path = e.${field};
          }
        ) (secretFields.${collection} or [ ])
      ) cfg.state.${collection}
    )
  ) collections;

  renderEntry =
    collection: key: e:
    let
      fields = builtins.removeAttrs e [ "_module" ];
      secrets = secretFields.${collection} or [ ];
    in
    lib.mapAttrs (
      field: v:
      if lib.elem field secrets && v != null then
        "${credentialsDir}/${credentialOf collection key}"
      else if field == "flake_input_overrides" then
        lib.mapAttrs (_: o: lib.filterAttrs (_: x: x != null) o) v
      else
        v
    ) fields;

  rendered = {
    version = 1;
    delete_state = cfg.settings.deleteState;
  }
  // lib.genAttrs collections (c: lib.mapAttrs (renderEntry c) cfg.state.${c});

  stateJson = builtins.toJSON rendered;
  stateFile = pkgs.writeText "gradient-state.json" stateJson;
  # `state check --offline` at build time: a bad document fails nixos-rebuild, not the service. It sees the
  # server's settings that judge a document (which repositories are allowed, the domain that names generated
  # keys, deleteState, the co-located worker), not its secrets (credentials exist only in the unit).
  checkEnvironment = lib.filterAttrs (
    name: value: !lib.hasPrefix "%d/" value && name != "GRADIENT_STATE_FILE" && name != "GRADIENT_FRONTEND_DIR"
  ) cfg.environment;
  checkedStateFile =
    if cfg.state.check then
      pkgs.runCommand "gradient-state.json" checkEnvironment ''
        ${cfg.package}/bin/gradient-server state check --offline ${stateFile}
        cp ${stateFile} $out
      ''
    else
      stateFile;
in
{
  options.services.gradient.state = {
    users = opt (types.attrsOf users) { } "Users.";
    organizations = opt (types.attrsOf organizations) { } "Organizations with their members.";
    roles = opt (types.attrsOf roles) { } "Custom roles of organizations.";
    projects = opt (types.attrsOf projects) { } "Projects.";
    caches = opt (types.attrsOf caches) { } "Binary caches.";
    api_keys = opt (types.attrsOf api_keys) { } "API keys.";
    workers = opt (types.attrsOf workers) { } "Worker registrations.";
    integrations = opt (types.attrsOf integrations) { } "Forge integrations.";
    check = opt types.bool true "Check the document with `gradient-server state check --offline` when the system is built.";
    rendered = mkOption {
      type = types.attrsOf types.anything;
      readOnly = true;
      internal = true;
      description = "The state document (docs/state.md) as the module renders it.";
    };
    credentials = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      internal = true;
      description = "The LoadCredential entries of the state's secret files.";
    };
  };

  config = mkIf cfg.enable {
    services.gradient.state.rendered = rendered;
    services.gradient.state.credentials = map (c: "${c.credential}:${c.path}") stateCredentials;

    assertions = lib.mapAttrsToList (key: i: {
      assertion =
        if i.kind == "inbound" then
          i.secret_file != null && i.endpoint_url == null && i.access_token_file == null
        else
          i.forge_type != null && i.endpoint_url != null && i.access_token_file != null && i.secret_file == null;
      message = "services.gradient.state.integrations.${key}: inbound needs secret_file only; outbound needs forge_type, endpoint_url and access_token_file";
    }) cfg.state.integrations
    ++ lib.concatLists (
      lib.mapAttrsToList (
        project: p:
        lib.mapAttrsToList (input: o: {
          assertion = (o.url != null) != (o.keep_url == true);
          message = "services.gradient.state.projects.${project}.flake_input_overrides.${input}: set exactly one of url or keep_url = true";
        }) p.flake_input_overrides
      ) cfg.state.projects
    );

    # A stable path, so a changed document is a reload (SIGHUP re-applies it), not a restart.
    environment.etc."gradient/state.json".source = checkedStateFile;
    services.gradient.environment.GRADIENT_STATE_FILE = "/etc/gradient/state.json";
    systemd.services.gradient-server.reloadTriggers = [ checkedStateFile ];
  };
}

# Helpers shared by the server and worker modules: the naming rule from options to GRADIENT_* variables
# (the same as apps/server/src/config.rs's `env_name`) and the rendering of values.
{ lib }:
rec {
  # systemd hardening both units share: what neither the server nor the worker needs of the system. Each unit
  # adds what only it can do without (the worker keeps what the Nix client it runs needs).
  hardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
  };

  # "settings.logLevel.web" -> "GRADIENT_LOG_LEVEL_WEB": drop a leading `settings.`, split camelCase into
  # words, join with `_`, upper-case, prefix `GRADIENT_`.
  envName =
    option:
    let
      path = lib.removePrefix "settings." option;
      # An upper-case letter after a lower-case letter or a digit starts a word.
      splitCamel =
        part:
        let
          chars = lib.stringToCharacters part;
          isUpper = c: c != lib.toLower c;
          isLowerOrDigit = c: c != lib.toUpper c || builtins.match "[0-9]" c != null;
          step =
            acc: c:
            {
              out = acc.out + (if isUpper c && acc.prevLower then "_" else "") + lib.toUpper c;
              prevLower = isLowerOrDigit c;
            };
        in
        (builtins.foldl' step {
          out = "";
          prevLower = false;
        } chars).out;
    in
    "GRADIENT_" + lib.concatMapStringsSep "_" splitCamel (lib.splitString "." path);

  # A value as the binaries parse it; null means "unset" (the binary's default applies).
  renderValue =
    v:
    if v == null then
      null
    else if builtins.isBool v then
      lib.boolToString v
    else if builtins.isList v then
      lib.concatMapStringsSep "," toString v
    else
      toString v;

  # The option at a dotted path of an attribute set of option values.
  valueAt = cfg: option: lib.attrByPath (lib.splitString "." option) null cfg;

  # { GRADIENT_X = "value"; ... } for the given options; unset (null) ones are left out.
  environmentFor =
    cfg: options:
    lib.filterAttrs (_: v: v != null) (
      lib.listToAttrs (map (o: lib.nameValuePair (envName o) (renderValue (valueAt cfg o))) options)
    );

  # A secret file option becomes a systemd credential named after its option: the unit loads the file
  # (`LoadCredential=name:path`, read by systemd as root) and the variable points into the credentials
  # directory (`%d`), so the secret is never in the environment or the Nix store.
  credentialName = option: lib.replaceStrings [ "." ] [ "-" ] option;
  credentialsFor =
    cfg: options:
    let
      set = lib.filter (o: valueAt cfg o != null) options;
    in
    {
      environment = lib.listToAttrs (map (o: lib.nameValuePair (envName o) "%d/${credentialName o}") set);
      loadCredential = map (o: "${credentialName o}:${valueAt cfg o}") set;
    };

  # A path option for a secret: an absolute path outside the Nix store, as a string (a Nix path literal
  # would be copied into the world-readable store).
  secretPathType = lib.types.addCheck lib.types.str (
    p: lib.hasPrefix "/" p && !(lib.hasPrefix builtins.storeDir p)
  ) // {
    description = "absolute path of a secret file outside the Nix store";
  };
}

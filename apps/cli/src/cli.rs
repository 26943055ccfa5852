//! The command line (clap) and the plain list / show / create / edit / delete commands.

use crate::output::Out;
use crate::{Result, Session, org_and_name};
use clap::{Args, Parser, Subcommand};
use gradient_client::types;

/// Gradient from the terminal: log in, manage organizations, projects and caches, evaluate and follow builds.
#[derive(Debug, Parser)]
#[command(name = "gradient", version, propagate_version = true)]
pub struct Cli {
    /// The server to talk to, by the name `gradient login` gave it (default: the last one logged in to).
    #[arg(long, global = true, env = "GRADIENT_SERVER")]
    pub server: Option<String>,
    /// Print JSON (the API's own objects) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a server with an API key (from GRADIENT_API_KEY, a prompt or standard input).
    Login {
        /// The server's address, e.g. https://gradient.example.com.
        url: String,
        /// The name to remember it by (default: its host).
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget a server's API key.
    Logout {
        /// The server's name (default: the current one).
        name: Option<String>,
    },
    /// Who the stored key belongs to, on which server.
    Whoami,
    /// Organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Projects (ORG/PROJECT).
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Binary caches: manage them, use one with Nix, push store paths to one.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// An organization's worker registrations.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Your API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Evaluate a project (its branch's head, or --commit); --watch follows it to the end.
    Eval {
        /// ORG/PROJECT
        project: String,
        /// The commit to evaluate (default: the head of the project's branch).
        #[arg(long)]
        commit: Option<String>,
        /// Follow the evaluation until it ends; exit 0 when it completed, 1 when it failed.
        #[arg(long)]
        watch: bool,
    },
    /// A project's evaluations, newest first.
    Evals {
        /// ORG/PROJECT
        project: String,
    },
    /// An evaluation's builds.
    Builds {
        /// The evaluation's id.
        evaluation: String,
        /// Only the builds that failed (or whose dependency failed, or were aborted).
        #[arg(long)]
        failed: bool,
    },
    /// A build's log; --follow streams it while the build runs.
    Log {
        /// The build's id.
        build: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Abort an evaluation and the builds only it needs.
    Abort { evaluation: String },
    /// Build an evaluation's failed, aborted and dependency-failed derivations again.
    Restart { evaluation: String },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct OrgFields {
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Whether anyone may see it (true or false).
    #[arg(long)]
    pub public: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        #[command(flatten)]
        fields: OrgFields,
    },
    Edit {
        name: String,
        #[command(flatten)]
        fields: OrgFields,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ProjectFields {
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// The branch to evaluate (default: the repository's default branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Which attributes to build, e.g. `checks.*.*` (comma-separated patterns).
    #[arg(long)]
    pub wildcard: Option<String>,
    /// How many evaluations to keep.
    #[arg(long)]
    pub keep_evaluations: Option<u32>,
    /// Poll the branch every so many seconds (0: never).
    #[arg(long)]
    pub poll_interval_secs: Option<u32>,
    /// Evaluate the branch head on a cron schedule (UTC), e.g. `0 3 * * *`.
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long)]
    pub active: Option<bool>,
    /// Evaluate pull requests from the project's own repository (default on).
    #[arg(long)]
    pub pull_requests: Option<bool>,
    /// Evaluate pull requests from forks too: their flakes run on your workers (default off).
    #[arg(long)]
    pub fork_pull_requests: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// An organization's projects.
    List {
        org: String,
    },
    Show {
        project: String,
    },
    Create {
        /// ORG/PROJECT
        project: String,
        /// The flake's Git repository URL.
        #[arg(long)]
        repository: String,
        #[command(flatten)]
        fields: ProjectFields,
    },
    Edit {
        project: String,
        #[arg(long)]
        repository: Option<String>,
        #[command(flatten)]
        fields: ProjectFields,
    },
    Delete {
        project: String,
    },
}

#[derive(Debug, Args)]
pub struct CacheFields {
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub public: Option<bool>,
    /// Its `Priority` in `nix-cache-info` (lower is asked first).
    #[arg(long)]
    pub priority: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        #[command(flatten)]
        fields: CacheFields,
    },
    Edit {
        name: String,
        #[command(flatten)]
        fields: CacheFields,
    },
    Delete {
        name: String,
    },
    /// Make Nix substitute from the cache: substituters and trusted-public-keys in nix.conf (and the netrc
    /// line for a private cache).
    Use {
        name: String,
        /// Print the settings instead of writing them.
        #[arg(long)]
        print: bool,
        /// The nix.conf to write (default: ~/.config/nix/nix.conf).
        #[arg(long)]
        nix_conf: Option<std::path::PathBuf>,
        /// The netrc file to write for a private cache (default: ~/.config/nix/netrc).
        #[arg(long)]
        netrc: Option<std::path::PathBuf>,
    },
    /// Push store paths and their closures (one question for what the cache lacks, then export streams).
    Push {
        name: String,
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// An organization's workers: connected or not, their systems, busy slots and jobs.
    List { org: String },
    /// Register a worker; prints the `peer_id:token` line for the worker's peers file.
    Create {
        org: String,
        /// The worker's id (`<stateDir>/worker-id`).
        worker_id: String,
        /// Your own token (default: the server makes one).
        #[arg(long)]
        token: Option<String>,
        /// A listening worker's /proto URL (ws://host:3100/proto): the server dials it.
        #[arg(long)]
        url: Option<String>,
    },
    /// Remove a registration.
    Delete { org: String, peer: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    List,
    /// Create a key; prints it once.
    Create {
        name: String,
        /// Limit it to one organization.
        #[arg(long)]
        org: Option<String>,
        /// Limit it to these permissions.
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    Delete {
        id: String,
    },
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

pub async fn org(s: &Session, c: OrgCommand, out: Out) -> Result<u8> {
    let show = |o: &types::OrgView| {
        out.show(o, || {
            format!(
                "{} ({})\npublic: {}\n{}",
                o.name,
                o.display_name,
                yes_no(o.public),
                o.description
            )
            .trim_end()
            .to_owned()
        })
    };
    match c {
        OrgCommand::List => {
            let list = s.client.list_orgs().await?.into_inner().message;
            out.table(&list, &["NAME", "PUBLIC", "DISPLAY NAME"], |o| {
                vec![o.name.clone(), yes_no(o.public), o.display_name.clone()]
            });
        }
        OrgCommand::Show { name } => show(&s.client.get_org(&name).await?.into_inner().message),
        OrgCommand::Create { name, fields } => {
            let body = types::NewOrgRequest {
                name,
                display_name: fields.display_name,
                description: fields.description,
                public: fields.public.unwrap_or_default(),
            };
            show(&s.client.create_org(&body).await?.into_inner().message);
        }
        OrgCommand::Edit { name, fields } => {
            let body = types::OrgPatch {
                display_name: fields.display_name,
                description: fields.description,
                public: fields.public,
            };
            show(&s.client.edit_org(&name, &body).await?.into_inner().message);
        }
        OrgCommand::Delete { name } => {
            let m = s.client.delete_org(&name).await?.into_inner().message;
            out.show(&m, || format!("Deleted organization {name}."));
        }
    }
    Ok(0)
}

pub async fn project(s: &Session, c: ProjectCommand, out: Out) -> Result<u8> {
    let show = |p: &types::ProjectView| {
        out.show(p, || {
            format!(
                "{}/{} ({})\nrepository: {}\nbranch: {}\nwildcard: {}\nactive: {}",
                p.organization,
                p.name,
                p.display_name,
                p.repository,
                p.branch.as_deref().unwrap_or("(the repository's default)"),
                p.wildcard,
                yes_no(p.active)
            )
        })
    };
    match c {
        ProjectCommand::List { org } => {
            let list = s.client.list_projects(&org).await?.into_inner().message;
            out.table(&list, &["NAME", "BRANCH", "ACTIVE", "REPOSITORY"], |p| {
                vec![
                    p.name.clone(),
                    p.branch.clone().unwrap_or_else(|| "-".into()),
                    yes_no(p.active),
                    p.repository.clone(),
                ]
            });
        }
        ProjectCommand::Show { project } => {
            let (org, name) = org_and_name(&project, "PROJECT")?;
            show(&s.client.get_project(&org, &name).await?.into_inner().message);
        }
        ProjectCommand::Create {
            project,
            repository,
            fields,
        } => {
            let (org, name) = org_and_name(&project, "PROJECT")?;
            let body = types::NewProjectRequest {
                name,
                repository,
                display_name: fields.display_name,
                description: fields.description,
                branch: fields.branch,
                wildcard: fields.wildcard,
                keep_evaluations: fields.keep_evaluations,
                poll_interval_secs: fields.poll_interval_secs,
                schedule: fields.schedule,
                active: fields.active,
                pull_requests: fields.pull_requests,
                fork_pull_requests: fields.fork_pull_requests,
                flake_input_overrides: Default::default(),
            };
            show(&s.client.create_project(&org, &body).await?.into_inner().message);
        }
        ProjectCommand::Edit {
            project,
            repository,
            fields,
        } => {
            let (org, name) = org_and_name(&project, "PROJECT")?;
            let body = types::ProjectPatch {
                repository,
                display_name: fields.display_name,
                description: fields.description,
                branch: fields.branch,
                wildcard: fields.wildcard,
                keep_evaluations: fields.keep_evaluations,
                poll_interval_secs: fields.poll_interval_secs,
                schedule: fields.schedule,
                active: fields.active,
                pull_requests: fields.pull_requests,
                fork_pull_requests: fields.fork_pull_requests,
                flake_input_overrides: Default::default(),
            };
            show(&s.client.edit_project(&org, &name, &body).await?.into_inner().message);
        }
        ProjectCommand::Delete { project } => {
            let (org, name) = org_and_name(&project, "PROJECT")?;
            let m = s.client.delete_project(&org, &name).await?.into_inner().message;
            out.show(&m, || format!("Deleted project {org}/{name}."));
        }
    }
    Ok(0)
}

pub async fn worker(s: &Session, c: WorkerCommand, out: Out) -> Result<u8> {
    match c {
        WorkerCommand::List { org } => {
            let list = s.client.get_org_overview(&org).await?.into_inner().message.workers;
            out.table(
                &list,
                &["PEER", "WORKER", "CONNECTED", "SYSTEMS", "BUSY", "JOBS"],
                |w| {
                    vec![
                        w.peer_id.to_string(),
                        w.worker_id.to_string(),
                        yes_no(w.connected),
                        w.systems.join(" "),
                        format!("{}/{}", w.jobs.len(), w.build_slots),
                        w.jobs.iter().map(|j| j.subject.as_str()).collect::<Vec<_>>().join(" "),
                    ]
                },
            );
        }
        WorkerCommand::Create {
            org,
            worker_id,
            token,
            url,
        } => {
            let body = types::RegisterWorkerRequest {
                worker_id,
                token: token.clone(),
                url,
            };
            let r = s.client.register_worker(&org, &body).await?.into_inner().message;
            out.show(&r, || match &r.token {
                Some(t) => format!("{}:{t}", r.peer_id),
                None => format!("{}:{}", r.peer_id, token.unwrap_or_default()),
            });
        }
        WorkerCommand::Delete { org, peer } => {
            let m = s.client.delete_worker(&org, &peer).await?.into_inner().message;
            out.show(&m, || format!("Removed the registration {peer} from {org}."));
        }
    }
    Ok(0)
}

pub async fn key(s: &Session, c: KeyCommand, out: Out) -> Result<u8> {
    match c {
        KeyCommand::List => {
            let list = s.client.list_keys().await?.into_inner().message;
            out.table(&list, &["ID", "NAME", "ORGANIZATION", "LAST USED"], |k| {
                vec![
                    k.id.to_string(),
                    k.name.clone(),
                    k.organization.map_or_else(|| "-".into(), |o| o.to_string()),
                    k.last_used_at.map_or_else(|| "never".into(), |t| t.to_rfc3339()),
                ]
            });
        }
        KeyCommand::Create { name, org, permissions } => {
            let body = types::NewKeyRequest {
                name,
                organization: org,
                permissions,
            };
            let k = s.client.create_key(&body).await?.into_inner().message;
            out.show(&k, || k.key.clone());
        }
        KeyCommand::Delete { id } => {
            let id = crate::parse_id(&id, "a key")?;
            let m = s.client.delete_key(&id).await?.into_inner().message;
            out.show(&m, || format!("Deleted key {id}."));
        }
    }
    Ok(0)
}

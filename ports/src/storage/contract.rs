//! The storage contract: what every `Storage` implementation must do, as scenarios.
//!
//! Each scenario is a `pub async fn name<S: Storage>(s: &S)` that builds its own data (fresh ids, names with a
//! random suffix) and panics with a message saying which rule was broken. Scenarios only look at rows they
//! created, so they also pass on a store shared with other tests; [`storage_contract!`](crate::storage_contract)
//! nevertheless gives each one a fresh store.
//!
//! The scenario list lives in one place: the `storage_contract!` macro below. A scenario not listed there is not
//! run by any adapter.

mod actions;
mod cache_contents;
mod caches;
mod declared;
mod evaluations;
mod identities;
mod integrations;
mod mailing;
mod members;
mod meta;
mod orgs;
mod projects;
mod queue;
mod roles;
mod sessions_audit;
mod support;
mod users;
mod workers;

pub use actions::*;
pub use cache_contents::*;
pub use caches::*;
pub use declared::*;
pub use evaluations::*;
pub use identities::*;
pub use integrations::*;
pub use mailing::*;
pub use members::*;
pub use meta::*;
pub use orgs::*;
pub use projects::*;
pub use queue::*;
pub use roles::*;
pub use sessions_audit::*;
pub use users::*;
pub use workers::*;

/// Runs the storage contract suite: one `#[tokio::test]` per scenario, each on a fresh store.
///
/// `$fresh` is an async function (or any expression callable with no arguments and returning a future) that
/// yields a new, empty store implementing `Storage`. The calling crate needs `tokio` (features `macros` and
/// `rt`) as a dev-dependency.
///
/// ```ignore
/// // tests/conformance.rs of an adapter
/// async fn fresh_sqlite() -> gradient_storage_sql::SqlStorage { /* ... */ }
///
/// mod sqlite {
///     gradient_ports::storage_contract!(crate::fresh_sqlite);
/// }
/// ```
#[macro_export]
macro_rules! storage_contract {
    ($fresh:expr) => {
        $crate::__storage_contract_tests!(
            $fresh;
            // Actions, deliveries, schedule anchors.
            actions_round_trip_and_go_with_their_project,
            deliveries_are_bounded_and_due_in_order,
            schedule_anchors_are_kept_apart_from_updates,
            // Users, sessions, API keys.
            user_round_trips,
            absent_users_are_none,
            user_by_email_matches_exactly,
            taken_username_conflicts,
            taken_email_conflicts,
            session_round_trips_and_deletes,
            session_of_unknown_user_is_not_found,
            api_key_round_trips,
            api_keys_are_listed_oldest_first,
            api_key_of_unknown_user_is_not_found,
            taken_api_key_hash_conflicts,
            api_key_is_deleted_only_by_its_owner,
            touching_an_api_key_records_only_its_last_use,
            // Email tokens, verification, password reset, the evaluation mail setting.
            email_tokens_are_single_use_per_purpose,
            password_reset_ends_the_users_sessions,
            evaluation_mail_is_on_until_turned_off,
            // OIDC identities and sign-ins in progress.
            oidc_user_round_trips_by_issuer_and_subject,
            oidc_user_creation_conflicts_leave_nothing,
            oidc_identities_link_once_and_list_oldest_first,
            oidc_flows_are_taken_once_and_expire,
            // Organizations.
            org_round_trips_and_creator_is_admin,
            absent_orgs_are_none,
            taken_org_name_conflicts,
            org_of_unknown_creator_is_not_found,
            update_org_changes_only_editable_fields,
            anonymous_sees_only_public_orgs,
            members_see_their_private_orgs,
            delete_org_cascades,
            // Memberships.
            set_membership_adds_and_changes_role,
            members_are_listed_by_username_with_role_names,
            membership_with_unknown_references_is_not_found,
            delete_membership_removes_only_that_member,
            // Custom roles.
            role_round_trips,
            roles_are_listed_by_name_per_org,
            taken_role_name_conflicts_case_insensitively,
            role_of_unknown_org_is_not_found,
            absent_roles_are_none,
            role_in_use_cannot_be_deleted,
            // Projects.
            project_round_trips,
            projects_are_listed_by_name_per_org,
            polled_projects_are_the_active_ones_with_an_interval,
            active_projects_are_those_of_every_org,
            taken_project_name_conflicts_per_org,
            project_of_unknown_org_is_not_found,
            update_project_changes_only_editable_fields,
            absent_projects_are_none,
            delete_project_removes_only_that_project,
            // Caches and subscriptions.
            cache_round_trips,
            taken_cache_name_conflicts,
            cache_of_unknown_creator_is_not_found,
            update_cache_changes_only_editable_fields,
            absent_caches_are_none,
            subscribe_and_unsubscribe,
            grants_and_the_push_cache,
            subscriptions_and_subscribers_are_listed_by_name,
            delete_cache_removes_its_subscriptions,
            anonymous_sees_only_public_caches,
            users_see_own_and_subscribed_caches,
            // Cache contents: NAR files and cached paths.
            nar_file_round_trips,
            put_nar_file_replaces_by_url,
            cached_path_round_trips,
            put_cached_path_keeps_the_first,
            batches_of_nar_files_and_paths_are_stored_whole,
            batches_with_an_unknown_cache_store_nothing,
            cache_contents_of_unknown_cache_are_not_found,
            absent_cache_contents_are_none,
            nar_url_in_use_is_per_cache,
            held_hash_parts_are_those_of_the_cache_only,
            orphan_nar_files_are_unreferenced_and_older_than_the_cutoff,
            orphan_nar_files_are_oldest_first_and_limited,
            touching_cached_paths_records_only_their_last_fetch,
            stale_cached_paths_are_least_recently_fetched_first,
            delete_nar_file_and_cached_path_remove_only_that_row,
            delete_cache_removes_its_contents,
            delete_org_keeps_subscribed_cache_contents,
            cache_usage_counts_paths_and_their_file_sizes,
            // Worker registrations.
            worker_registration_round_trips,
            a_listening_worker_url_round_trips,
            absent_worker_registrations_are_none,
            worker_registration_of_unknown_org_is_not_found,
            worker_registered_twice_in_an_org_conflicts,
            taken_peer_id_conflicts,
            worker_registrations_are_listed_oldest_first,
            delete_worker_registration_only_within_its_org,
            delete_org_removes_its_worker_registrations,
            worker_proof_keys_are_replaced_only_if_unchanged,
            // The job queue.
            job_round_trips,
            absent_jobs_are_none,
            job_of_unknown_org_is_not_found,
            taken_job_id_conflicts,
            build_jobs_are_enqueued_once_per_derivation_while_active,
            simultaneous_enqueues_of_a_derivation_store_one_job,
            evaluation_jobs_are_enqueued_once_while_active,
            enqueue_jobs_stores_a_list_as_enqueue_job_does,
            assign_jobs_assigns_only_queued_jobs,
            queued_jobs_are_oldest_first_and_limited,
            assign_job_is_compare_and_set,
            requeue_jobs_of_a_lost_worker_counts_attempts,
            finish_job_only_from_assigned,
            finish_jobs_ends_each_assigned_job_of_the_worker,
            finish_job_is_compare_and_set_on_the_run,
            cancel_queued_job_only_from_queued,
            jobs_assigned_to_lists_a_workers_jobs_oldest_first,
            delete_org_removes_its_jobs,
            // Evaluations, derivations, entry points and builds.
            evaluation_round_trips,
            absent_evaluation_rows_are_none,
            evaluation_of_unknown_project_is_not_found_and_taken_id_conflicts,
            evaluations_are_listed_newest_first_and_limited,
            update_evaluation_changes_only_status_errors_and_update_time,
            derivation_round_trips,
            put_derivations_ignores_stored_paths,
            derivations_are_kept_per_organization,
            dependents_are_the_organizations_derivations_taking_an_input,
            entry_points_round_trip_by_attribute,
            entry_points_with_unknown_references_are_refused,
            link_builds_builds_once_per_org,
            link_builds_returns_existing_status,
            link_builds_with_unknown_references_is_not_found,
            derivations_and_builds_are_read_many_at_once,
            update_builds_if_compares_each_build,
            end_builds_with_a_run_write_only_while_its_job_is_in_that_assignment,
            update_build_changes_only_status_transitions_and_update_time,
            builds_are_found_by_id,
            build_statuses_answer_many_paths_at_once,
            count_builds_counts_by_status,
            totals_count_by_status_the_queue_and_nar_files,
            build_logs_round_trip_and_are_replaced,
            end_builds_writes_every_build_and_log_or_nothing,
            build_writes_keep_a_move_committed_meanwhile,
            build_statuses_round_trip,
            delete_evaluation_removes_its_entry_points_and_links,
            delete_project_removes_its_evaluations,
            delete_org_removes_its_evaluations_and_builds,
            // Integrations.
            webhook_secret_round_trips,
            set_webhook_secret_replaces,
            webhook_secret_of_unknown_org_is_not_found,
            delete_org_removes_its_webhook_secret,
            org_ssh_keys_are_kept_once_replaced_and_deleted_with_their_org,
            forge_connection_round_trips_and_is_replaced,
            due_statuses_are_undelivered_reports_whose_time_has_come,
            status_attempts_are_recorded,
            delete_org_removes_its_forge_connection_and_statuses,
            github_installation_round_trips_and_is_replaced_by_id,
            an_account_has_one_github_installation,
            delete_github_installation_forgets_only_it,
            github_installation_links_belong_to_their_organization,
            // Declarative state.
            state_writes_create_managed_rows,
            state_writes_update_unmanage_and_delete,
            state_writes_are_all_or_nothing,
            // Meta.
            meta_init_keeps_the_first_value,
            // Sessions as listed, and audit logs.
            sessions_are_listed_newest_first_with_their_use,
            deleting_a_users_sessions_keeps_the_one_asked_for,
            audit_entries_read_back_newest_first_by_page,
            audit_log_is_bounded_and_deleted_with_its_organization,
        );
    };
}

/// Expands to one test per scenario; use [`storage_contract!`](crate::storage_contract) instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_contract_tests {
    ($fresh:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let storage = ($fresh)().await;
                $crate::storage::contract::$scenario(&storage).await;
            }
        )+
    };
}

//! Projects' actions and their deliveries, in memory.

use super::MemoryStorage;
use gradient_domain::ActionId;
use gradient_domain::ProjectId;
use gradient_domain::model::{Action, Delivery, DeliveryState, Timestamp};
use gradient_domain::ports::storage::{Actions, Result, StorageError};

impl Actions for MemoryStorage {
    async fn create_action(&self, action: &Action) -> Result<()> {
        self.with(|s| {
            if !s.projects.contains_key(&action.project_id) {
                return Err(StorageError::NotFound);
            }
            if s.actions.contains_key(&action.id) {
                return Err(StorageError::Conflict("action id".into()));
            }
            if s.actions
                .values()
                .any(|a| a.project_id == action.project_id && a.name == action.name)
            {
                return Err(StorageError::Conflict("action name".into()));
            }
            s.actions.insert(action.id, action.clone());
            Ok(())
        })
    }

    async fn action(&self, id: ActionId) -> Result<Option<Action>> {
        self.with(|s| Ok(s.actions.get(&id).cloned()))
    }

    async fn actions_of(&self, project: ProjectId) -> Result<Vec<Action>> {
        self.with(|s| {
            let mut actions: Vec<Action> = s
                .actions
                .values()
                .filter(|a| a.project_id == project)
                .cloned()
                .collect();
            actions.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(actions)
        })
    }

    async fn update_action(&self, action: &Action) -> Result<()> {
        self.with(|s| {
            let Some(stored) = s.actions.get(&action.id) else {
                return Err(StorageError::NotFound);
            };
            let project = stored.project_id;
            if s.actions
                .values()
                .any(|a| a.project_id == project && a.id != action.id && a.name == action.name)
            {
                return Err(StorageError::Conflict("action name".into()));
            }
            let stored = s.actions.get_mut(&action.id).ok_or(StorageError::NotFound)?;
            stored.name = action.name.clone();
            stored.kind = action.kind.clone();
            stored.events = action.events.clone();
            stored.enabled = action.enabled;
            Ok(())
        })
    }

    async fn delete_action(&self, id: ActionId) -> Result<bool> {
        self.with(|s| {
            let gone = s.actions.remove(&id).is_some();
            s.deliveries.retain(|d| d.action_id != id);
            Ok(gone)
        })
    }

    async fn add_delivery(&self, delivery: &Delivery, keep: u32) -> Result<()> {
        self.with(|s| {
            if !s.actions.contains_key(&delivery.action_id) {
                return Err(StorageError::NotFound);
            }
            s.deliveries.push(delivery.clone());
            let mut mine: Vec<(Timestamp, gradient_domain::DeliveryId)> = s
                .deliveries
                .iter()
                .filter(|d| d.action_id == delivery.action_id)
                .map(|d| (d.created_at, d.id))
                .collect();
            mine.sort();
            let excess = mine.len().saturating_sub(keep as usize);
            let drop: std::collections::HashSet<_> = mine.into_iter().take(excess).map(|(_, id)| id).collect();
            s.deliveries.retain(|d| !drop.contains(&d.id));
            Ok(())
        })
    }

    async fn due_deliveries(&self, now: Timestamp, limit: u32) -> Result<Vec<Delivery>> {
        self.with(|s| {
            let mut due: Vec<Delivery> = s
                .deliveries
                .iter()
                .filter(|d| d.state == DeliveryState::Pending && d.next_attempt_at <= now)
                .cloned()
                .collect();
            due.sort_by_key(|d| (d.created_at, d.id));
            due.truncate(limit as usize);
            Ok(due)
        })
    }

    async fn update_delivery(&self, delivery: &Delivery) -> Result<()> {
        self.with(|s| {
            let stored = s
                .deliveries
                .iter_mut()
                .find(|d| d.id == delivery.id)
                .ok_or(StorageError::NotFound)?;
            stored.state = delivery.state;
            stored.attempts = delivery.attempts;
            stored.status_code = delivery.status_code;
            stored.last_error = delivery.last_error.clone();
            stored.next_attempt_at = delivery.next_attempt_at;
            stored.updated_at = delivery.updated_at;
            Ok(())
        })
    }

    async fn deliveries_of(&self, action: ActionId, limit: u32) -> Result<Vec<Delivery>> {
        self.with(|s| {
            let mut mine: Vec<Delivery> = s.deliveries.iter().filter(|d| d.action_id == action).cloned().collect();
            mine.sort_by_key(|d| std::cmp::Reverse((d.created_at, d.id)));
            mine.truncate(limit as usize);
            Ok(mine)
        })
    }
}

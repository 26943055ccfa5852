//! The in-memory storage passes the storage contract.

use gradient_ports::storage::MemoryStorage;

async fn fresh_memory() -> MemoryStorage {
    MemoryStorage::new()
}

mod memory {
    gradient_ports::storage_contract!(crate::fresh_memory);
}

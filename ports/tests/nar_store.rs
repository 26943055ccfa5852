//! The in-memory NAR store passes the NAR store contract.

use gradient_ports::nar_store::MemoryNarStore;

async fn fresh_memory() -> MemoryNarStore {
    MemoryNarStore::new()
}

mod nar_memory {
    gradient_ports::nar_store_contract!(crate::fresh_memory);
}

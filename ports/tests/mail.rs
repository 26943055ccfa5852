//! The in-memory mailer passes the mail contract.

use gradient_ports::mail::MemoryMailer;

async fn fresh_memory() -> MemoryMailer {
    MemoryMailer::new()
}

mod mail_memory {
    gradient_ports::mail_contract!(crate::fresh_memory);
}

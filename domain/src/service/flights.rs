//! One lookup at a time per question: when many requests ask storage the same thing at once (a Nix client's
//! parallel narinfo requests to a private cache, all finding its key's remembered read right expired in the
//! same instant), the first asks and the others wait for it, then read its answer from the memo. Without
//! this, each of them took a database connection of its own: a burst of 16 opened 16 SQLite connections
//! (each a thread with its own copy of the schema, about 0.4 MB) that stayed open for their lifetime.
//!
//! Bounded by what is in flight: one entry per question being asked, one waker per request waiting for it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// The questions being asked now, each with the requests waiting for its answer.
pub struct Flights<K> {
    pending: Mutex<HashMap<K, Vec<Waker>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

/// Whose turn it is to ask: this request's ([`Lead`], held while it asks and remembers the answer), or
/// another's ([`Landing`]: wait for it, then look in the memo again).
pub enum Turn<'a, K: Eq + Hash> {
    Lead(Lead<'a, K>),
    Wait(Landing<'a, K>),
}

impl<K: Eq + Hash + Clone> Flights<K> {
    /// This request's turn to ask `key`, or the landing of the request asking it already.
    pub fn take_off(&self, key: K) -> Turn<'_, K> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.contains_key(&key) {
            Turn::Wait(Landing {
                flights: self,
                key,
                slot: None,
            })
        } else {
            pending.insert(key.clone(), Vec::new());
            Turn::Lead(Lead { flights: self, key })
        }
    }
}

/// The asking request's turn: dropped (answered, failed or cancelled), it wakes those waiting.
pub struct Lead<'a, K: Eq + Hash> {
    flights: &'a Flights<K>,
    key: K,
}

impl<K: Eq + Hash> Drop for Lead<'_, K> {
    fn drop(&mut self) {
        let waiting = self
            .flights
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        for waker in waiting.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Ready once the request asking the same question has ended its turn.
pub struct Landing<'a, K: Eq + Hash> {
    flights: &'a Flights<K>,
    key: K,
    /// Where this request's waker is in the list (each waiter has its own place: no search of the others').
    slot: Option<usize>,
}

impl<K: Eq + Hash + Unpin> Future for Landing<'_, K> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut pending = this.flights.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(&this.key) {
            None => Poll::Ready(()),
            Some(waiting) => {
                match this.slot.and_then(|i| waiting.get_mut(i)) {
                    Some(w) => {
                        if !w.will_wake(cx.waker()) {
                            w.clone_from(cx.waker());
                        }
                    }
                    None => {
                        this.slot = Some(waiting.len());
                        waiting.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(landing: &mut Landing<'_, &'static str>) -> Poll<()> {
        Pin::new(landing).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn the_first_asks_the_others_wait_until_its_turn_ends() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.take_off("k") else {
            panic!("the first asks")
        };
        let mut waiting: Vec<_> = (0..3)
            .map(|_| match flights.take_off("k") {
                Turn::Wait(landing) => landing,
                Turn::Lead(_) => panic!("only one asks at a time"),
            })
            .collect();
        // Another question is asked at the same time.
        assert!(matches!(flights.take_off("other"), Turn::Lead(_)));
        for landing in &mut waiting {
            assert!(poll(landing).is_pending());
        }
        // Each waiter has one place, polled again or not.
        assert!(poll(&mut waiting[0]).is_pending());
        assert_eq!(flights.pending.lock().unwrap().get("k").map(Vec::len), Some(3));
        drop(lead);
        for landing in &mut waiting {
            assert!(poll(landing).is_ready());
        }
        // Nothing stays behind; the next one to ask leads again.
        assert!(flights.pending.lock().unwrap().is_empty());
        assert!(matches!(flights.take_off("k"), Turn::Lead(_)));
    }
}

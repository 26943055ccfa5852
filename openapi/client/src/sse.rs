//! Server-Sent Events: a parser for the `text/event-stream` format (sans I/O, fed bytes as they arrive) and a
//! reader that follows a stream across reconnections, sending `Last-Event-ID` so nothing is seen twice.

use crate::{Failure, types};
use futures_util::StreamExt;
use progenitor_client::{ByteStream, ResponseValue};
use std::time::Duration;

/// One event as the server sent it: its type (`message` when unnamed), data and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Splits a `text/event-stream` into events, whatever the chunking. Comments (keep-alives) are skipped.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
}

impl Parser {
    /// Feeds bytes; answers the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(Event {
                        event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                        data: std::mem::take(&mut self.data).join("\n"),
                        id: self.id.clone(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// Follows an event stream opened by `open` (a generated operation of the document, given the `Last-Event-ID`
/// to resume from), reconnecting after a dropped connection with the last id seen until an `end` event
/// arrives; `on_event` gets every event. A refusal (the server's error body) ends it; an unreachable server is
/// retried `retries` times, a second apart.
pub async fn follow<F, Fut>(mut open: F, retries: u32, mut on_event: impl FnMut(&Event)) -> Result<(), Failure>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<ResponseValue<ByteStream>, progenitor_client::Error<types::ErrorBody>>>,
{
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut body = match open(last_id.clone()).await {
            Ok(r) => r.into_inner(),
            Err(e) => match Failure::from(e) {
                Failure::Unreachable(m) => {
                    failures += 1;
                    if failures > retries {
                        return Err(Failure::Unreachable(m));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                other => return Err(other),
            },
        };
        failures = 0;
        let mut parser = Parser::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for event in parser.feed(&chunk) {
                if event.id.is_some() {
                    last_id.clone_from(&event.id);
                }
                on_event(&event);
                if event.event == "end" {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_whole_whatever_the_chunking() {
        let text = b": keep-alive\n\nevent: build\ndata: {\"a\":1}\nid: 7/nix/store/x.drv\n\ndata: line one\ndata: line two\r\nid: 9\n\nevent: end\ndata: completed\n\n";
        let expected = vec![
            Event {
                event: "build".into(),
                data: "{\"a\":1}".into(),
                id: Some("7/nix/store/x.drv".into()),
            },
            Event {
                event: "message".into(),
                data: "line one\nline two".into(),
                id: Some("9".into()),
            },
            Event {
                event: "end".into(),
                data: "completed".into(),
                id: Some("9".into()),
            },
        ];
        for size in [1, 2, 5, 1000] {
            let mut parser = Parser::default();
            let got: Vec<Event> = text.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(got, expected, "chunks of {size}");
        }
    }
}

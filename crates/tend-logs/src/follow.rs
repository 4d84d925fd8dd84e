//! Live subscribers of a service's lines (`Logs::follow`).
//!
//! Lines are offered in the ingest path with `try_send`: a full channel never
//! blocks ingestion; the subscriber's miss count grows instead and is delivered as
//! one `Lagged(n)` as soon as there is room again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use crate::filter::Filter;
use crate::{lock, FollowItem, LogLine, Stream};

struct Sub {
    filter: Filter,
    tx: Sender<FollowItem>,
    lagged: u64,
}

/// The followers of one service.
#[derive(Default)]
pub(crate) struct Subscribers {
    count: AtomicUsize,
    subs: Mutex<Vec<Sub>>,
}

/// What a line looks like to a follower's filter, before it is materialized.
pub(crate) struct Candidate<'a> {
    pub release: Option<u32>,
    pub instance: Option<&'a str>,
    pub stream: Stream,
    pub level: u8,
    pub raw: &'a str,
}

impl Subscribers {
    pub fn add(&self, filter: Filter, tx: Sender<FollowItem>) {
        let mut subs = lock(&self.subs);
        subs.push(Sub {
            filter,
            tx,
            lagged: 0,
        });
        self.count.store(subs.len(), Ordering::Release);
    }

    /// Cheap check for the ingest path.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Offers a line to every follower whose filter matches; `make` builds it once.
    pub fn offer(&self, c: &Candidate<'_>, make: impl FnOnce() -> LogLine) {
        let mut subs = lock(&self.subs);
        let mut line: Option<LogLine> = None;
        let mut make = Some(make);
        let mut closed = false;
        for s in subs.iter_mut() {
            let f = &s.filter;
            if !f.source_ok(c.release, c.instance, c.stream)
                || !f.level_ok(c.level)
                || !f.text_ok(c.raw)
            {
                continue;
            }
            if s.lagged > 0 && !send_lag(s) {
                if s.tx.is_closed() {
                    closed = true;
                } else {
                    s.lagged += 1;
                }
                continue;
            }
            let l = match (&line, make.take()) {
                (Some(l), _) => l.clone(),
                (None, Some(mk)) => {
                    let l = mk();
                    line = Some(l.clone());
                    l
                }
                (None, None) => continue, // unreachable: make is taken only when line is set
            };
            match s.tx.try_send(FollowItem::Line(l)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => s.lagged += 1,
                Err(TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            subs.retain(|s| !s.tx.is_closed());
            self.count.store(subs.len(), Ordering::Release);
        }
    }

    /// Delivers pending `Lagged` markers where there is room; forgets closed followers.
    pub fn tick(&self) {
        if !self.any() {
            return;
        }
        let mut subs = lock(&self.subs);
        for s in subs.iter_mut().filter(|s| s.lagged > 0) {
            send_lag(s);
        }
        subs.retain(|s| !s.tx.is_closed());
        self.count.store(subs.len(), Ordering::Release);
    }
}

/// Tries to send the lag marker; true when it was sent.
fn send_lag(s: &mut Sub) -> bool {
    match s.tx.try_send(FollowItem::Lagged(s.lagged)) {
        Ok(()) => {
            s.lagged = 0;
            true
        }
        Err(_) => false,
    }
}

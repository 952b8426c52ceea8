//! Who gets a connection: caps on TLS handshakes in flight and on open connections, overall,
//! per certificate identity and, for callers without a certificate, per address, with room
//! kept for callers that have one. A connection over a cap is closed right after its handshake
//! (or, for handshakes, at once), so a flood of idle or anonymous connections cannot take a
//! service's memory or its file descriptors from the mesh's own callers.
//!
//! Each admitted connection holds a [`Permit`] until it closes. Its life is bounded too: a
//! connection is closed when its client certificate expires (so expiry is checked again) or at
//! `max_connection_age_secs`, whichever comes first; clients reconnect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::telemetry::Metrics;

/// `[server.limits]`: a service's caps on connections and calls.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections, all callers together.
    pub max_connections: u32,
    /// Of those, kept for callers with a certificate: callers without one (health checks,
    /// enrollment) share the rest.
    pub reserved_for_authenticated: u32,
    /// Open connections under one certificate identity (`user/alice`, `node/n-1`, ...).
    pub max_connections_per_identity: u32,
    /// Open connections without a certificate from one address.
    pub max_anonymous_connections_per_address: u32,
    /// TLS handshakes in flight, all callers together, and from one address.
    pub max_handshakes: u32,
    pub max_handshakes_per_address: u32,
    /// A handshake not done by then is dropped.
    pub handshake_timeout_secs: u64,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// A call's handler must answer (its response headers, for a stream) within this.
    pub request_timeout_secs: u64,
    /// A connection is closed after this long, and when its client certificate expires.
    pub max_connection_age_secs: u64,
    /// The largest header list a request may carry (bytes).
    pub max_header_list_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 2048,
            reserved_for_authenticated: 512,
            max_connections_per_identity: 256,
            max_anonymous_connections_per_address: 32,
            max_handshakes: 256,
            max_handshakes_per_address: 32,
            handshake_timeout_secs: 5,
            max_streams_per_connection: 128,
            request_timeout_secs: 300,
            max_connection_age_secs: 24 * 3600,
            max_header_list_bytes: 16 << 10,
        }
    }
}

impl Limits {
    /// Refuses limits that cannot work, saying which.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_identity",
                self.max_connections_per_identity as u64,
            ),
            (
                "max_anonymous_connections_per_address",
                self.max_anonymous_connections_per_address as u64,
            ),
            ("max_handshakes", self.max_handshakes as u64),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address as u64,
            ),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as u64,
            ),
            ("request_timeout_secs", self.request_timeout_secs),
            ("max_connection_age_secs", self.max_connection_age_secs),
            ("max_header_list_bytes", self.max_header_list_bytes as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[server.limits] {name} must be more than 0"));
        }
        if self.reserved_for_authenticated >= self.max_connections {
            return Err(format!(
                "[server.limits] reserved_for_authenticated ({}) must be less than max_connections ({}): callers without a certificate (health checks, enrollment) need room too",
                self.reserved_for_authenticated, self.max_connections
            ));
        }
        Ok(())
    }
}

/// Why a connection was refused (a metric label: a fixed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Handshakes,
    HandshakesFromAddress,
    Connections,
    ConnectionsForIdentity,
    AnonymousFromAddress,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Handshakes => "handshakes",
            Refusal::HandshakesFromAddress => "handshakes_from_address",
            Refusal::Connections => "connections",
            Refusal::ConnectionsForIdentity => "connections_for_identity",
            Refusal::AnonymousFromAddress => "anonymous_from_address",
        }
    }
}

#[derive(Default)]
struct Counts {
    handshakes: u32,
    handshakes_by_address: HashMap<IpAddr, u32>,
    connections: u32,
    by_identity: HashMap<String, u32>,
    anonymous_by_address: HashMap<IpAddr, u32>,
}

/// A connection's (or a handshake's) place under the caps, given back when dropped.
pub struct Permit {
    admission: Admission,
    kind: Held,
}

enum Held {
    Handshake(IpAddr),
    Connection(Who),
}

/// Whom a connection counts against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A caller with a certificate, by its identity (`role/name` in its mesh).
    Identity(String),
    /// A caller without one, by its address.
    Anonymous(IpAddr),
}

/// The caps of one service's listener, shared by its connections.
#[derive(Clone)]
pub struct Admission {
    limits: Arc<Limits>,
    counts: Arc<Mutex<Counts>>,
    open: Gauge,
    refused: Family<crate::telemetry::Labels, Counter>,
}

impl Admission {
    pub fn new(limits: Limits, metrics: &Metrics) -> Admission {
        Admission {
            limits: Arc::new(limits),
            counts: Arc::default(),
            open: metrics.gauge("connections_open", "TLS connections open now"),
            refused: metrics.counter_family(
                "connections_refused",
                "Connections and handshakes refused by a cap, by the cap",
            ),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.refused
            .get_or_create(&vec![("cap".to_string(), why.as_str().to_string())])
            .inc();
        why
    }

    /// A place for a handshake from `address`.
    pub fn handshake(&self, address: IpAddr) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock().unwrap();
        if c.handshakes >= self.limits.max_handshakes {
            return Err(self.refuse(Refusal::Handshakes));
        }
        let from = c.handshakes_by_address.entry(address).or_default();
        if *from >= self.limits.max_handshakes_per_address {
            return Err(self.refuse(Refusal::HandshakesFromAddress));
        }
        *from += 1;
        c.handshakes += 1;
        Ok(Permit {
            admission: self.clone(),
            kind: Held::Handshake(address),
        })
    }

    /// A place for an open connection of `who`.
    pub fn connection(&self, who: Who) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock().unwrap();
        let l = &self.limits;
        let room = match who {
            Who::Identity(_) => l.max_connections,
            Who::Anonymous(_) => l.max_connections - l.reserved_for_authenticated,
        };
        if c.connections >= room {
            return Err(self.refuse(Refusal::Connections));
        }
        match &who {
            Who::Identity(id) => {
                let n = c.by_identity.entry(id.clone()).or_default();
                if *n >= l.max_connections_per_identity {
                    return Err(self.refuse(Refusal::ConnectionsForIdentity));
                }
                *n += 1;
            }
            Who::Anonymous(address) => {
                let n = c.anonymous_by_address.entry(*address).or_default();
                if *n >= l.max_anonymous_connections_per_address {
                    return Err(self.refuse(Refusal::AnonymousFromAddress));
                }
                *n += 1;
            }
        }
        c.connections += 1;
        self.open.set(c.connections as i64);
        Ok(Permit {
            admission: self.clone(),
            kind: Held::Connection(who),
        })
    }
}

/// Takes one off `map[key]`, forgetting keys that reach zero (the maps stay as small as what is
/// open now, however many addresses or identities have come and gone).
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock().unwrap();
        match &self.kind {
            Held::Handshake(address) => {
                c.handshakes -= 1;
                release(&mut c.handshakes_by_address, address);
            }
            Held::Connection(who) => {
                c.connections -= 1;
                match who {
                    Who::Identity(id) => release(&mut c.by_identity, id),
                    Who::Anonymous(address) => release(&mut c.anonymous_by_address, address),
                }
                self.admission.open.set(c.connections as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limits: Limits) -> Admission {
        Admission::new(limits, &Metrics::new("test"))
    }

    #[test]
    fn caps_hold_and_places_come_back() {
        let a = admission(Limits {
            max_connections: 4,
            reserved_for_authenticated: 2,
            max_connections_per_identity: 2,
            max_anonymous_connections_per_address: 1,
            max_handshakes: 2,
            max_handshakes_per_address: 1,
            ..Limits::default()
        });
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        // Handshakes: one per address, two in all.
        let h1 = a.handshake(x).unwrap();
        assert_eq!(a.handshake(x).err(), Some(Refusal::HandshakesFromAddress));
        let h2 = a.handshake(y).unwrap();
        assert_eq!(
            a.handshake("127.0.0.4".parse().unwrap()).err(),
            Some(Refusal::Handshakes)
        );
        drop((h1, h2));
        assert!(a.handshake(x).is_ok());
        // Anonymous callers: one per address, and only the unreserved half of the room.
        let n1 = a.connection(Who::Anonymous(x)).unwrap();
        assert_eq!(
            a.connection(Who::Anonymous(x)).err(),
            Some(Refusal::AnonymousFromAddress)
        );
        let n2 = a.connection(Who::Anonymous(y)).unwrap();
        assert_eq!(
            a.connection(Who::Anonymous("127.0.0.5".parse().unwrap()))
                .err(),
            Some(Refusal::Connections)
        );
        // The reserved room is for callers with a certificate, two per identity.
        let alice = || Who::Identity("user/alice".into());
        let u1 = a.connection(alice()).unwrap();
        let u2 = a.connection(alice()).unwrap();
        assert_eq!(
            a.connection(Who::Identity("user/bob".into())).err(),
            Some(Refusal::Connections)
        );
        drop(n1);
        assert_eq!(
            a.connection(alice()).err(),
            Some(Refusal::ConnectionsForIdentity)
        );
        let bob = a.connection(Who::Identity("user/bob".into())).unwrap();
        drop((n2, u1, u2, bob));
        let c = a.counts.lock().unwrap();
        assert_eq!(c.connections, 0);
        assert!(c.by_identity.is_empty() && c.anonymous_by_address.is_empty());
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(Limits::default().check().is_ok());
        let no_room = Limits {
            reserved_for_authenticated: 2048,
            ..Limits::default()
        };
        assert!(
            no_room
                .check()
                .unwrap_err()
                .contains("reserved_for_authenticated")
        );
        let zero = Limits {
            max_streams_per_connection: 0,
            ..Limits::default()
        };
        assert!(
            zero.check()
                .unwrap_err()
                .contains("max_streams_per_connection")
        );
    }
}

//! Approval tickets: tool calls held for a human, and quarantined output held for
//! review. Stored durably as JSON lines (each line the whole ticket after a change;
//! the last line for an id wins), synced before a change is acknowledged, so tickets
//! survive a restart. A torn last line (a crash mid-write) is cut off on load.
//!
//! A ticket binds an agent, the call's hash and the policy snapshot. Once approved it
//! can be redeemed once, by the same agent proposing the same call (same hash) again,
//! until it expires. An expired pending ticket counts as rejected.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::output::{Detector, OutputAction};

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval ticket `{0}`")]
    NotFound(String),
    #[error("ticket `{id}` is already {status}")]
    AlreadyDecided { id: String, status: TicketStatus },
    #[error("ticket `{0}` has expired; it can no longer be approved")]
    Expired(String),
    #[error("the approvals store {file}: {message}")]
    Storage { file: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Pending,
    Approved,
    Rejected,
    /// Pending past its expiry: rejected without a decision.
    Expired,
    /// Approved and used: the call was delivered.
    Redeemed,
}

impl std::fmt::Display for TicketStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            TicketStatus::Pending => "pending",
            TicketStatus::Approved => "approved",
            TicketStatus::Rejected => "rejected",
            TicketStatus::Expired => "expired",
            TicketStatus::Redeemed => "redeemed",
        };
        f.write_str(text)
    }
}

/// The exact call a ticket holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldCall {
    pub id: String,
    pub name: String,
    /// Canonical JSON.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Held {
    ToolCall {
        call: HeldCall,
        call_hash: String,
    },
    Output {
        content: String,
        findings: Vec<(Detector, OutputAction)>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub by: String,
    pub comment: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub held: Held,
    pub agent: String,
    pub tenant: String,
    pub request_id: String,
    #[serde(default)]
    pub run_id: Option<String>,
    pub snapshot: String,
    pub rule: Option<String>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// As stored: pending, approved, rejected or redeemed (expiry is read off the clock).
    pub status: TicketStatus,
    #[serde(default)]
    pub review: Option<Review>,
    #[serde(default)]
    pub redeemed_by: Option<String>,
}

impl Ticket {
    pub fn new_id() -> String {
        format!("apr_{}", crate::chat::random_uuid().simple())
    }

    /// The status at `now`: a pending ticket past its expiry is expired.
    pub fn status_at(&self, now: DateTime<Utc>) -> TicketStatus {
        match self.status {
            TicketStatus::Pending if now >= self.expires_at => TicketStatus::Expired,
            status => status,
        }
    }

    pub fn call_hash(&self) -> Option<&str> {
        match &self.held {
            Held::ToolCall { call_hash, .. } => Some(call_hash),
            Held::Output { .. } => None,
        }
    }
}

/// Which tickets to list.
#[derive(Debug, Default, Clone)]
pub struct TicketFilter {
    pub status: Option<TicketStatus>,
    pub agent: Option<String>,
}

pub struct ApprovalStore {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    tickets: HashMap<String, Ticket>,
    /// Opened on the first write, so a gateway that never holds a call creates no file.
    file: Option<File>,
}

impl ApprovalStore {
    /// Loads the tickets in `path` (absent: none yet).
    pub fn open(path: &Path) -> Result<Self, ApprovalError> {
        let storage = |message: String| ApprovalError::Storage {
            file: path.to_path_buf(),
            message,
        };
        let mut tickets = HashMap::new();
        if path.exists() {
            let file = File::open(path).map_err(|e| storage(e.to_string()))?;
            let mut good_until = 0u64;
            let mut torn = false;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let read = reader
                    .read_line(&mut line)
                    .map_err(|e| storage(e.to_string()))?;
                if read == 0 {
                    break;
                }
                match serde_json::from_str::<Ticket>(line.trim_end()) {
                    Ok(ticket) if line.ends_with('\n') => {
                        good_until += read as u64;
                        tickets.insert(ticket.id.clone(), ticket);
                    }
                    // Only the last line can be torn; damage anywhere else is not ours
                    // to repair.
                    _ => {
                        let mut rest = String::new();
                        reader
                            .read_line(&mut rest)
                            .map_err(|e| storage(e.to_string()))?;
                        if !rest.is_empty() {
                            return Err(storage(format!(
                                "line after byte {good_until} is not a ticket"
                            )));
                        }
                        torn = true;
                        break;
                    }
                }
            }
            if torn {
                tracing::warn!(file = %path.display(), "cutting off a torn last ticket line");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| storage(e.to_string()))?;
                file.set_len(good_until)
                    .map_err(|e| storage(e.to_string()))?;
                file.sync_all().map_err(|e| storage(e.to_string()))?;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                tickets,
                file: None,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Stores a new ticket; returns once it is on disk.
    pub fn create(&self, ticket: Ticket) -> Result<Ticket, ApprovalError> {
        let mut state = self.lock();
        self.persist(&mut state, &ticket)?;
        state.tickets.insert(ticket.id.clone(), ticket.clone());
        Ok(ticket)
    }

    pub fn get(&self, id: &str) -> Option<Ticket> {
        self.lock().tickets.get(id).cloned()
    }

    /// Tickets matching `filter`, oldest first.
    pub fn list(&self, filter: &TicketFilter, now: DateTime<Utc>) -> Vec<Ticket> {
        let state = self.lock();
        let mut tickets: Vec<Ticket> = state
            .tickets
            .values()
            .filter(|t| {
                filter
                    .status
                    .is_none_or(|status| t.status_at(now) == status)
            })
            .filter(|t| filter.agent.as_ref().is_none_or(|agent| &t.agent == agent))
            .cloned()
            .collect();
        tickets.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        tickets
    }

    /// Approves or rejects a pending ticket.
    pub fn review(&self, id: &str, approve: bool, review: Review) -> Result<Ticket, ApprovalError> {
        let mut state = self.lock();
        let ticket = state
            .tickets
            .get(id)
            .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        match ticket.status_at(review.at) {
            TicketStatus::Pending => {}
            TicketStatus::Expired => return Err(ApprovalError::Expired(id.to_string())),
            status => {
                return Err(ApprovalError::AlreadyDecided {
                    id: id.to_string(),
                    status,
                })
            }
        }
        let mut updated = ticket.clone();
        updated.status = if approve {
            TicketStatus::Approved
        } else {
            TicketStatus::Rejected
        };
        updated.review = Some(review);
        self.persist(&mut state, &updated)?;
        state.tickets.insert(updated.id.clone(), updated.clone());
        Ok(updated)
    }

    /// Uses an approved, unexpired ticket of `agent` for the call with `call_hash`, if
    /// there is one: it is then spent.
    pub fn redeem(
        &self,
        agent: &str,
        call_hash: &str,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ticket>, ApprovalError> {
        let mut state = self.lock();
        let found = state
            .tickets
            .values()
            .filter(|t| {
                t.agent == agent
                    && t.status == TicketStatus::Approved
                    && now < t.expires_at
                    && t.call_hash() == Some(call_hash)
            })
            .min_by_key(|t| t.created_at)
            .cloned();
        let Some(mut ticket) = found else {
            return Ok(None);
        };
        ticket.status = TicketStatus::Redeemed;
        ticket.redeemed_by = Some(request_id.to_string());
        self.persist(&mut state, &ticket)?;
        state.tickets.insert(ticket.id.clone(), ticket.clone());
        Ok(Some(ticket))
    }

    fn persist(&self, state: &mut State, ticket: &Ticket) -> Result<(), ApprovalError> {
        let storage = |message: String| ApprovalError::Storage {
            file: self.path.clone(),
            message,
        };
        if state.file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| storage(e.to_string()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| storage(e.to_string()))?;
            state.file = Some(file);
        }
        let mut line = serde_json::to_string(ticket).map_err(|e| storage(e.to_string()))?;
        line.push('\n');
        let file = state
            .file
            .as_mut()
            .ok_or_else(|| storage("not open".into()))?;
        let written = file
            .seek(SeekFrom::End(0))
            .and_then(|_| file.write_all(line.as_bytes()))
            .and_then(|()| file.sync_data());
        if let Err(error) = written {
            // The file may now end in a partial line; the next open cuts it off.
            state.file = None;
            return Err(storage(error.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn ticket(agent: &str, hash: &str, now: DateTime<Utc>) -> Ticket {
        Ticket {
            id: Ticket::new_id(),
            held: Held::ToolCall {
                call: HeldCall {
                    id: "call_1".into(),
                    name: "refund".into(),
                    arguments: "{\"amount\":600}".into(),
                },
                call_hash: hash.into(),
            },
            agent: agent.into(),
            tenant: "acme".into(),
            request_id: "r1".into(),
            run_id: None,
            snapshot: "s".into(),
            rule: Some("refund-large".into()),
            reason: "big".into(),
            created_at: now,
            expires_at: now + Duration::hours(1),
            status: TicketStatus::Pending,
            review: None,
            redeemed_by: None,
        }
    }

    fn review(at: DateTime<Utc>) -> Review {
        Review {
            by: "alice".into(),
            comment: "ok".into(),
            at,
        }
    }

    #[test]
    fn tickets_survive_reopening_and_redeem_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/approvals.jsonl");
        let now = Utc::now();
        let store = ApprovalStore::open(&path).unwrap();
        assert!(!path.exists());
        let created = store.create(ticket("a", "h1", now)).unwrap();
        drop(store);

        let store = ApprovalStore::open(&path).unwrap();
        assert_eq!(store.get(&created.id), Some(created.clone()));
        assert!(store.redeem("a", "h1", "r2", now).unwrap().is_none());
        store.review(&created.id, true, review(now)).unwrap();
        assert!(matches!(
            store.review(&created.id, false, review(now)),
            Err(ApprovalError::AlreadyDecided { .. })
        ));
        assert!(store.redeem("b", "h1", "r2", now).unwrap().is_none());
        assert!(store.redeem("a", "h2", "r2", now).unwrap().is_none());
        drop(store);

        let store = ApprovalStore::open(&path).unwrap();
        let redeemed = store.redeem("a", "h1", "r3", now).unwrap().unwrap();
        assert_eq!(redeemed.status, TicketStatus::Redeemed);
        assert!(store.redeem("a", "h1", "r4", now).unwrap().is_none());
        drop(store);
        let store = ApprovalStore::open(&path).unwrap();
        assert_eq!(
            store.get(&created.id).unwrap().status,
            TicketStatus::Redeemed
        );
    }

    #[test]
    fn expired_tickets_cannot_be_approved_or_redeemed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ApprovalStore::open(&dir.path().join("a.jsonl")).unwrap();
        let now = Utc::now();
        let pending = store.create(ticket("a", "h", now)).unwrap();
        let later = now + Duration::hours(2);
        assert_eq!(pending.status_at(later), TicketStatus::Expired);
        assert!(matches!(
            store.review(&pending.id, true, review(later)),
            Err(ApprovalError::Expired(_))
        ));
        let approved = store.create(ticket("a", "h", now)).unwrap();
        store.review(&approved.id, true, review(now)).unwrap();
        assert!(store.redeem("a", "h", "r", later).unwrap().is_none());
        let listed = store.list(
            &TicketFilter {
                status: Some(TicketStatus::Expired),
                agent: None,
            },
            later,
        );
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, pending.id);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let store = ApprovalStore::open(&path).unwrap();
        let kept = store.create(ticket("a", "h", Utc::now())).unwrap();
        drop(store);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"id\": \"apr_torn\", \"he").unwrap();
        drop(file);
        let store = ApprovalStore::open(&path).unwrap();
        assert!(store.get(&kept.id).is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && !text.contains("apr_torn"));
        store.create(ticket("a", "h2", Utc::now())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}

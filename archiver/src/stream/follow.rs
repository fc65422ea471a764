//! Finding the server to archive among the hosts of the connection string, on every
//! (re)connect: the repository's cluster, a primary unless `target_session_attrs` says
//! otherwise, on the repository's newest timeline or on a newer one whose history passes
//! through it. A server on an older timeline (the old primary back after a failover: split
//! brain) is refused and the next host tried. The slot is created on the server reached
//! when it lacks one (a new primary after a failover); when that server no longer has
//! the WAL the repository needs next, `gap_end` finds exactly where its WAL begins.

use tidemark_protocol::conninfo::{ConnInfo, TargetSessionAttrs};
use tidemark_protocol::replication::{StartOutcome, StreamMessage};
use tidemark_protocol::{parse_history, Lsn, SegmentName, TimelineId};
use tidemark_store::layout;
use tidemark_store::repository::RepoError;

use super::Archiver;
use crate::cluster::Cluster;
use crate::error::ArchiverError;

/// `stream` needs the primary: an unset `target_session_attrs` means `primary` here (libpq
/// would read it as `any`). `target_session_attrs=any` archives whatever host answers
/// first, a standby included (cascading). `status` asks the server `stream` would use.
pub(crate) fn stream_target(conninfo: &ConnInfo) -> ConnInfo {
    let mut info = conninfo.clone();
    info.target_session_attrs
        .get_or_insert(TargetSessionAttrs::Primary);
    info
}

impl Archiver {
    /// The newest timeline the repository follows: the newest archived (or being
    /// received), and any newer one whose history file is stored.
    async fn repository_timeline(&self) -> Result<TimelineId, ArchiverError> {
        let mut newest = self
            .catalog
            .newest_timeline()?
            .unwrap_or(TimelineId::FIRST)
            .max(self.timeline);
        loop {
            let next = TimelineId(newest.0 + 1);
            let key = layout::history_key(next);
            let stored =
                crate::uploads::with_retry("look up a newer timeline's history file", || {
                    self.repo.head(&key)
                })
                .await?;
            if stored.is_none() {
                return Ok(newest);
            }
            newest = next;
        }
    }

    /// Connect to the first host that may be archived. When none may: a failure a later
    /// attempt may cure (a host down, a standby not yet promoted) wins, so that the
    /// reconnect loop keeps trying; else the refusal (split brain, another cluster); else
    /// the first error.
    pub(super) async fn connect_server(
        &self,
        conninfo: &ConnInfo,
    ) -> Result<Cluster, ArchiverError> {
        let newest = self.repository_timeline().await?;
        let conninfo = stream_target(conninfo);
        let several = conninfo.hosts().len() > 1;
        let (mut transient, mut refused, mut other) = (None, None, None);
        for index in 0..conninfo.hosts().len() {
            let Some(one) = conninfo.only_host(index) else {
                break;
            };
            let host = one.endpoint();
            match self.try_server(&one, newest).await {
                Ok(cluster) => {
                    tracing::info!(%host, timeline = %cluster.system.timeline, "connected");
                    return Ok(cluster);
                }
                // With one host its error is the outcome, reported once by the caller.
                Err(e) if e.is_connection_loss() => {
                    if several {
                        tracing::warn!(%host, error = %e, "host not usable now; trying the next");
                    }
                    transient.get_or_insert(e);
                }
                Err(e) if e.is_wrong_server() => {
                    if several {
                        tracing::error!(%host, error = %e, "host refused; trying the next");
                    }
                    refused.get_or_insert(e);
                }
                Err(e) => {
                    if several {
                        tracing::warn!(%host, error = %e, "host failed; trying the next");
                    }
                    other.get_or_insert(e);
                }
            }
        }
        Err(transient
            .or(refused)
            .or(other)
            .unwrap_or_else(|| ArchiverError::Task("no host to connect to".into())))
    }

    /// One host: connected, its cluster and timeline checked against the repository, not
    /// able to make us a synchronous standby, and holding our slot.
    async fn try_server(
        &self,
        conninfo: &ConnInfo,
        newest: TimelineId,
    ) -> Result<Cluster, ArchiverError> {
        let mut cluster = Cluster::connect(conninfo).await?;
        if cluster.system.system_id != self.system_identifier {
            return Err(RepoError::OtherCluster {
                repo_sysid: self.system_identifier,
                cluster_sysid: cluster.system.system_id,
            }
            .into());
        }
        let server = cluster.system.timeline;
        let host = cluster.client.host().to_string();
        if server < newest {
            return Err(ArchiverError::OldTimeline {
                host,
                server,
                archived: newest,
            });
        }
        if server > TimelineId::FIRST {
            let (_, content) = cluster.client.timeline_history(server).await?;
            if server > newest {
                let history = parse_history(&content).map_err(|e| ArchiverError::BadHistory {
                    timeline: server,
                    reason: e.to_string(),
                })?;
                if !history.iter().any(|e| e.parent == newest) {
                    return Err(ArchiverError::DivergentTimeline {
                        archived: newest,
                        server,
                    });
                }
            } else {
                // The same timeline number, but another promotion's: different history.
                let stored = crate::uploads::with_retry("read a timeline history file", || {
                    self.repo.history(server)
                })
                .await?;
                if stored.is_some_and(|stored| stored != content) {
                    return Err(ArchiverError::DivergentTimeline {
                        archived: newest,
                        server,
                    });
                }
            }
        }
        self.refuse_synchronous(&mut cluster.client, conninfo)
            .await?;
        if cluster
            .client
            .create_physical_slot(&self.config.slot)
            .await?
        {
            tracing::info!(%host, slot = %self.config.slot, "created physical replication slot");
        }
        Ok(cluster)
    }

    /// The server reached no longer has WAL of `timeline` from `from`: the start of the
    /// oldest segment of `timeline` it still has, the end of the gap. WAL is removed oldest
    /// first, so a binary search with START_REPLICATION probes between `from` and where
    /// the server's `timeline` ends (its current position, or where it branched off)
    /// finds it; each probe is a connection of its own.
    pub(super) async fn gap_end(
        &self,
        conninfo: &ConnInfo,
        timeline: TimelineId,
        from: Lsn,
    ) -> Result<Lsn, ArchiverError> {
        let (mut client, system) = self.connect_checked(conninfo).await?;
        let end = if system.timeline == timeline {
            system.xlogpos
        } else {
            let (_, content) = client.timeline_history(system.timeline).await?;
            let history = parse_history(&content).map_err(|e| ArchiverError::BadHistory {
                timeline: system.timeline,
                reason: e.to_string(),
            })?;
            history
                .iter()
                .find(|e| e.parent == timeline)
                .map_or(system.xlogpos, |e| e.switch_lsn)
        };
        drop(client);
        let (mut missing, mut present) = (
            from.segment_number(self.seg),
            end.segment_number(self.seg)
                .max(from.segment_number(self.seg) + 1),
        );
        while present - missing > 1 {
            let mid = missing + (present - missing) / 2;
            let at = SegmentName::new(timeline, mid).start_lsn(self.seg);
            if self.server_has(conninfo, timeline, at).await? {
                present = mid;
            } else {
                missing = mid;
            }
        }
        Ok(SegmentName::new(timeline, present).start_lsn(self.seg))
    }

    /// Whether the server can still stream `timeline` from `at` (no slot: nothing moves).
    async fn server_has(
        &self,
        conninfo: &ConnInfo,
        timeline: TimelineId,
        at: Lsn,
    ) -> Result<bool, ArchiverError> {
        let removed = |e: &tidemark_protocol::ReplicationError| e.sqlstate() == Some("58P01");
        let (client, _) = self.connect_checked(conninfo).await?;
        let mut stream = match client.start_replication(None, at, timeline).await {
            Ok(StartOutcome::Streaming(stream)) => stream,
            Ok(StartOutcome::TimelineEnded { .. }) => return Ok(true),
            Err(e) if removed(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        loop {
            match stream.next_message().await {
                Ok(StreamMessage::Keepalive { .. }) => continue,
                Ok(_) => return Ok(true),
                Err(e) if removed(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

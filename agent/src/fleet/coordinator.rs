//! The coordinator: the member that won the fleet's election advances
//! every rollout.
//!
//! Owns the campaign and the reconcile loop (a watch on the fleet's keys
//! plus a timer: level-triggered, so a missed event only delays a step).
//! Each round reads the whole fleet at one revision (a linearizable read),
//! asks `plan::reconcile` what to do, and writes it in one transaction per
//! rollout that holds only while this member still leads (the leader key's
//! creation revision) and nobody changed the rollout since it was read (its
//! mod revision). A deposed coordinator's writes fail; a new one resumes
//! from what is stored. Must never write outside such a transaction.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

use super::keys::Keys;
use super::plan;
use super::{encode, timed, FleetError, Snapshot};

/// A round at least this often, whatever the watch says (bakes and
/// deadlines end without any key changing).
const ROUND: Duration = Duration::from_millis(500);
/// How long a burst of changes is gathered before a round.
const SETTLE: Duration = Duration::from_millis(50);

/// Campaigns with the session's lease, then coordinates until an error
/// (the session's end aborts the task).
pub async fn run(
    keys: Keys,
    host: String,
    mut client: Client,
    lease: i64,
) -> Result<(), FleetError> {
    let won = client
        .campaign(keys.leader(), host.clone(), lease)
        .await
        .map_err(super::unavailable)?;
    let leader = won.leader().ok_or_else(|| {
        FleetError::Unavailable("the election answered without a leader key".into())
    })?;
    let (leader_key, leader_rev) = (leader.key().to_vec(), leader.rev());
    tracing::info!(host = %host, "fleet coordinator: elected");

    let mut events = client
        .watch(keys.all(), Some(WatchOptions::new().with_prefix()))
        .await
        .map_err(super::unavailable)?;
    loop {
        round(&keys, &mut client, &leader_key, leader_rev).await?;
        // Wait for a change or the timer, whichever comes first.
        tokio::select! {
            m = events.message() => match m {
                Ok(Some(_)) => {
                    // Changes come in bursts (a wave's hosts): one round for
                    // what arrives within a moment.
                    tokio::time::sleep(SETTLE).await;
                    while let Ok(m) = tokio::time::timeout(Duration::ZERO, events.message()).await {
                        m.map_err(super::unavailable)?;
                    }
                }
                Ok(None) => return Err(FleetError::Unavailable("the watch ended".into())),
                Err(e) => return Err(super::unavailable(e)),
            },
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
}

/// One reconcile of every rollout.
async fn round(
    keys: &Keys,
    client: &mut Client,
    leader_key: &[u8],
    leader_rev: i64,
) -> Result<(), FleetError> {
    // The rollouts first: an idle fleet costs one small read a round.
    let rollouts =
        timed(client.get(keys.rollouts(), Some(GetOptions::new().with_prefix()))).await?;
    let live = |kv: &etcd_client::KeyValue| {
        super::decode::<plan::Rollout>(kv.value()).is_some_and(|r| !r.progress.phase.is_over())
    };
    if !rollouts.kvs().iter().any(live) {
        return Ok(());
    }
    // The rest at the same revision: one consistent view.
    let rev = rollouts.header().map(|h| h.revision()).unwrap_or(0);
    let mut kvs = rollouts.kvs().to_vec();
    for prefix in [keys.hosts(), keys.statuses()] {
        let got = timed(client.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        ))
        .await?;
        kvs.extend_from_slice(got.kvs());
    }
    let halt = timed(client.get(keys.halt(), Some(GetOptions::new().with_revision(rev)))).await?;
    kvs.extend_from_slice(halt.kvs());
    let seen = Snapshot::read(keys, &kvs);
    let now = crate::domain::now_ms();
    for (app, (rollout, mod_rev)) in &seen.rollouts {
        if rollout.progress.phase.is_over() {
            continue;
        }
        let decision = plan::reconcile(rollout, &seen.observed(app), now);
        let running = decision.running();
        if decision.progress == rollout.progress && decision.assign.is_empty() {
            continue;
        }
        let mut ops = vec![TxnOp::put(
            keys.rollout(app),
            encode(&plan::Rollout {
                progress: decision.progress.clone(),
                ..rollout.clone()
            }),
            None,
        )];
        for (host, a) in &decision.assign {
            ops.push(TxnOp::put(
                keys.assignment(app, host),
                encode(a),
                None::<PutOptions>,
            ));
        }
        ops.push(if running {
            TxnOp::put(keys.running(app), rollout.spec.id.clone(), None)
        } else {
            TxnOp::delete(keys.running(app), None)
        });
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(leader_key.to_vec(), CompareOp::Equal, leader_rev),
                Compare::mod_revision(keys.rollout(app), CompareOp::Equal, *mod_rev),
            ])
            .and_then(ops);
        let done = timed(client.txn(txn)).await?;
        if !done.succeeded() {
            // Either someone changed the rollout (next round reads it) or
            // this member no longer leads: then it must stop.
            let leads = timed(client.get(leader_key.to_vec(), None))
                .await?
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == leader_rev);
            if !leads {
                return Err(FleetError::Unavailable(
                    "lost the fleet's leadership".into(),
                ));
            }
            continue;
        }
        for e in &decision.events {
            tracing::info!(app = %app, rollout = %rollout.spec.id, "fleet: {e}");
        }
    }
    Ok(())
}

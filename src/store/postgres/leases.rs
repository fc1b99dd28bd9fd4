//! Space leases on PostgreSQL: claiming (renewing what this replica holds, taking what
//! nobody holds) and releasing. Times are the database's clock, shared by every replica.
//! It must not decide when to claim or what a lost lease means: delivery does.

use std::time::Duration;

use deadpool_postgres::Client;

use super::db;
use crate::store::{LeaseClaim, StoreError};

/// Renews or takes, for `lease` from now by the database's clock, `holder`'s fair share of
/// `spaces` and answers the ones it holds now. The fair share is the spaces divided by the
/// replicas alive (each claim is a heartbeat), rounded up: a replica keeps up to that many
/// of its own, lets the rest lapse (it stops sending for them at once, another replica
/// takes them when they expire, as a handover), and takes expired ones up to it. One transaction
/// locks the rows, so two replicas claiming at once never get the same space.
pub(super) async fn claim(
    client: &mut Client,
    holder: &str,
    spaces: &[String],
    lease: Duration,
) -> Result<Vec<LeaseClaim>, StoreError> {
    let lease_ms = lease.as_secs_f64() * 1000.0;
    let transaction = client.transaction().await.map_err(db)?;
    transaction
        .execute(
            "INSERT INTO kabar_replicas (holder, expires_at)
             VALUES ($1, now() + $2::float8 * interval '1 millisecond')
             ON CONFLICT (holder) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            &[&holder, &lease_ms],
        )
        .await
        .map_err(db)?;
    // Replicas gone for good leave their row; an hour on, it goes.
    transaction
        .execute(
            "DELETE FROM kabar_replicas WHERE expires_at < now() - interval '1 hour'",
            &[],
        )
        .await
        .map_err(db)?;
    let live: i64 = transaction
        .query_one(
            "SELECT count(*) FROM kabar_replicas WHERE expires_at > now()",
            &[],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    transaction
        .execute(
            "INSERT INTO kabar_leases (space) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            &[&spaces],
        )
        .await
        .map_err(db)?;
    let rows = transaction
        .query(
            "SELECT space, holder, expires_at < now() AS expired, last_answer_ms
             FROM kabar_leases WHERE space = ANY($1) ORDER BY space FOR UPDATE",
            &[&spaces],
        )
        .await
        .map_err(db)?;
    let mut leases = Vec::with_capacity(rows.len());
    for row in &rows {
        leases.push(Current {
            space: row.try_get(0).map_err(db)?,
            holder: row.try_get(1).map_err(db)?,
            expired: row.try_get(2).map_err(db)?,
            last_answer_ms: row.try_get(3).map_err(db)?,
        });
    }
    let chosen = choose(&leases, holder, fair_share(spaces.len(), live));
    let names: Vec<&str> = chosen.iter().map(|lease| lease.space.as_str()).collect();
    // Own leases beyond the share lapse: no longer named as this replica's (so the next
    // holder's claim is a handover, not a takeover), but not free before they expire.
    let lapsing: Vec<&str> = leases
        .iter()
        .filter(|lease| lease.holder == holder && !lease.expired)
        .map(|lease| lease.space.as_str())
        .filter(|space| !names.contains(space))
        .collect();
    if !lapsing.is_empty() {
        transaction
            .execute(
                "UPDATE kabar_leases SET holder = '' WHERE space = ANY($1) AND holder = $2",
                &[&lapsing, &holder],
            )
            .await
            .map_err(db)?;
    }
    transaction
        .execute(
            "UPDATE kabar_leases SET holder = $2,
              expires_at = now() + $3::float8 * interval '1 millisecond'
             WHERE space = ANY($1)",
            &[&names, &holder, &lease_ms],
        )
        .await
        .map_err(db)?;
    transaction.commit().await.map_err(db)?;
    Ok(chosen
        .into_iter()
        .map(|lease| LeaseClaim {
            // Released leases are handovers; an expired one of another replica is a
            // takeover: that replica died, hung or lost the database.
            takeover: !lease.holder.is_empty() && lease.holder != holder,
            space: lease.space.clone(),
            last_answer_ms: lease.last_answer_ms,
        })
        .collect())
}

/// A lease as the claim found it.
#[derive(Debug, Clone)]
struct Current {
    space: String,
    holder: String,
    expired: bool,
    last_answer_ms: Option<i64>,
}

/// Each live replica's share of `spaces`, rounded up so the shares cover them all.
fn fair_share(spaces: usize, live: i64) -> usize {
    let live = usize::try_from(live).unwrap_or(1).max(1);
    spaces.div_ceil(live)
}

/// The leases `holder` keeps or takes: its own valid ones first (they keep their pace and
/// need no handover), then expired ones (released, lapsed or never held), up to `share`.
/// A lease another replica let lapse is not taken before it expires: that replica may
/// still be finishing a request on it.
fn choose<'a>(leases: &'a [Current], holder: &str, share: usize) -> Vec<&'a Current> {
    let own = leases
        .iter()
        .filter(|lease| lease.holder == holder && !lease.expired);
    let free = leases.iter().filter(|lease| lease.expired);
    own.chain(free).take(share).collect()
}

/// Gives `spaces` up at once (on shutdown), so another replica continues them without
/// waiting out the lease. Only leases still `holder`'s are touched.
pub(super) async fn release(
    client: &Client,
    holder: &str,
    spaces: &[String],
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE kabar_leases SET holder = '', expires_at = '-infinity'
             WHERE space = ANY($1) AND holder = $2",
            &[&spaces, &holder],
        )
        .await
        .map_err(db)?;
    // No longer alive: the others' shares grow at their next claim.
    client
        .execute("DELETE FROM kabar_replicas WHERE holder = $1", &[&holder])
        .await
        .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(space: &str, holder: &str, expired: bool) -> Current {
        Current {
            space: space.to_owned(),
            holder: holder.to_owned(),
            expired,
            last_answer_ms: None,
        }
    }

    #[test]
    fn shares_cover_every_space() {
        assert_eq!(fair_share(20, 3), 7);
        assert_eq!(fair_share(20, 1), 20);
        assert_eq!(fair_share(20, 0), 20);
        assert_eq!(fair_share(0, 3), 0);
        assert_eq!(fair_share(1000, 3) * 3, 1002);
    }

    #[test]
    fn a_replica_keeps_its_own_first_then_takes_free_and_expired_never_valid_foreign() {
        let leases = [
            lease("a", "other", false),
            lease("b", "", true),
            lease("c", "me", false),
            lease("d", "gone", true),
            lease("e", "me", false),
            // Let lapse by another replica, not yet expired: not free yet.
            lease("f", "", false),
        ];
        let chosen: Vec<&str> = choose(&leases, "me", 3)
            .iter()
            .map(|l| l.space.as_str())
            .collect();
        assert_eq!(chosen, ["c", "e", "b"]);
        let chosen: Vec<&str> = choose(&leases, "me", 10)
            .iter()
            .map(|l| l.space.as_str())
            .collect();
        assert_eq!(chosen, ["c", "e", "b", "d"]);
        // Over its share, a replica keeps only the share of its own: the rest lapse.
        let chosen: Vec<&str> = choose(&leases, "me", 1)
            .iter()
            .map(|l| l.space.as_str())
            .collect();
        assert_eq!(chosen, ["c"]);
    }
}

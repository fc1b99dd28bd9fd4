//! Space leases on PostgreSQL: claiming (renewing what this replica holds, taking what
//! nobody holds) and releasing. Times are the database's clock, shared by every replica.
//! It must not decide when to claim or what a lost lease means: delivery does.

use std::time::Duration;

use deadpool_postgres::Client;

use super::PostgresError;
use crate::store::{LeaseClaim, StoreError};

fn db(error: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(PostgresError::from(error))
}

/// Renews or takes the lease of each of `spaces` that is `holder`'s, free, or expired, for
/// `lease` from now by the database's clock; answers the ones `holder` now holds. One
/// statement locks the rows, so two replicas claiming at once get each space once.
pub(super) async fn claim(
    client: &Client,
    holder: &str,
    spaces: &[String],
    lease: Duration,
) -> Result<Vec<LeaseClaim>, StoreError> {
    let ensure = client
        .prepare_cached(
            "INSERT INTO kabar_leases (space) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(db)?;
    client.execute(&ensure, &[&spaces]).await.map_err(db)?;
    let statement = client
        .prepare_cached(
            "WITH old AS (
                 SELECT space, holder, expires_at FROM kabar_leases
                 WHERE space = ANY($1) ORDER BY space FOR UPDATE
             )
             UPDATE kabar_leases AS lease
             SET holder = $2, expires_at = now() + $3::float8 * interval '1 millisecond'
             FROM old
             WHERE lease.space = old.space
               AND (old.holder = $2 OR old.holder = '' OR old.expires_at < now())
             RETURNING lease.space, old.holder, lease.last_answer_ms",
        )
        .await
        .map_err(db)?;
    let lease_ms = lease.as_secs_f64() * 1000.0;
    let rows = client
        .query(&statement, &[&spaces, &holder, &lease_ms])
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let previous: String = row.try_get(1).map_err(db)?;
            Ok(LeaseClaim {
                space: row.try_get(0).map_err(db)?,
                // Released leases are handovers; an expired one of another replica is a
                // takeover: that replica died, hung or lost the database.
                takeover: !previous.is_empty() && previous != holder,
                last_answer_ms: row.try_get(2).map_err(db)?,
            })
        })
        .collect()
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
    Ok(())
}

//! LISTEN on the outbox channel: every replica hears which space got new messages, whoever
//! queued them, and reconnects by itself. It must not read the queue or send.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tracing::{debug, warn};

use super::connect::{client_config, tls};
use super::transaction::OUTBOX_CHANNEL;
use crate::config::Postgres;
use crate::store::Wakeup;

/// Wake-ups waiting for delivery to take them; past this, new ones are dropped (senders
/// re-read their queues every few seconds anyway, and a flood must not grow memory).
pub(super) const WAKEUP_BUFFER: usize = 4096;
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Listens until `wakeups` is closed (delivery stopped) or `stop` fires.
pub(super) async fn run(
    settings: Arc<Postgres>,
    wakeups: mpsc::Sender<Wakeup>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = listen_once(&settings, &wakeups) => {}
            _ = stop.changed() => return,
        }
        if wakeups.is_closed() || *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection's life: LISTEN, then forward each notification until it ends.
async fn listen_once(settings: &Postgres, wakeups: &mpsc::Sender<Wakeup>) {
    let connector = match tls(settings) {
        Ok(connector) => connector,
        Err(e) => {
            warn!(error = %e, "cannot listen for new messages; senders poll instead");
            return;
        }
    };
    let config = match client_config(settings) {
        Ok(config) => config,
        Err(e) => {
            warn!(error = %e, "cannot listen for new messages; senders poll instead");
            return;
        }
    };
    let (client, mut connection) = match config.connect(connector).await {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %super::PostgresError::from(e), "cannot connect to listen for new messages; retrying");
            return;
        }
    };
    let forward = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    let wakeup = Wakeup::Space(notification.payload().to_owned());
                    if wakeups.try_send(wakeup).is_err() && wakeups.is_closed() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %super::PostgresError::from(e), "lost the connection listening for new messages; reconnecting");
                    return;
                }
                None => return,
            }
        }
    };
    let subscribe = async {
        match client
            .batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}"))
            .await
        {
            Ok(()) => {
                // Whatever was queued while nobody listened: every sender looks once.
                let _ = wakeups.try_send(Wakeup::All);
                std::future::pending::<()>().await;
            }
            Err(e) => {
                warn!(error = %super::PostgresError::from(e), "cannot LISTEN for new messages; retrying");
            }
        }
    };
    tokio::select! {
        _ = forward => {}
        _ = subscribe => {}
    }
}

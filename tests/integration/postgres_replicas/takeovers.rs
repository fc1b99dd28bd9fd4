//! Takeovers: a replica killed or paused past its lease, and PostgreSQL restarted under a
//! running kabar. Nothing acknowledged is lost; duplicates and early sends stay bounded.

use super::*;

/// A backlog in `spaces` spread over the replicas: `per_space` firing alerts each, plus a
/// resolve of the first, posted round-robin.
async fn backlog(
    replicas: &[Replica],
    spaces: &[(String, String)],
    per_space: usize,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut next = 0;
    for i in 0..per_space {
        for (space, _) in spaces {
            let base = replicas[next % replicas.len()].url("");
            next += 1;
            acked.push(post_acked(&base, space, &format!("Q{i}{space}"), Kind::Firing).await);
        }
    }
    for (space, _) in spaces {
        let base = replicas[next % replicas.len()].url("");
        next += 1;
        acked.push(post_acked(&base, space, &format!("Q0{space}"), Kind::Resolved).await);
    }
    acked
}

/// The index of the replica holding the most spaces, and those spaces.
fn busiest(held: &[BTreeSet<String>]) -> (usize, BTreeSet<String>) {
    let index = (0..held.len())
        .max_by_key(|i| held[*i].len())
        .expect("replicas");
    (index, held[index].clone())
}

/// Waits until each of `spaces` has had at least `n` requests at the fake.
async fn wait_progress(chat: &FakeChat, spaces: &BTreeSet<String>, n: usize) {
    for space in spaces {
        chat.wait_for_requests(space, n, WAIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_busiest_replica_during_delivery() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(Some(1.0));
    let url = pg.database();
    let spaces = spaces(&chat, 6);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(SLOW_RATE));
    let mut replicas = start_fleet(3, &config, &url).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let held = wait_every_space_held_once(&all, spaces.len()).await;
    let (victim, killed_spaces) = busiest(&held);
    let started = Instant::now();
    // 3 messages a space, one every 5 s: the kill lands after the first.
    let acked = backlog(&replicas, &spaces, 2).await;
    wait_progress(&chat, &killed_spaces, 1).await;

    let killed_at = Instant::now();
    replicas[victim].process.take().expect("running").kill_9();
    let survivors: Vec<&Replica> = replicas.iter().filter(|r| r.process.is_some()).collect();
    wait_metrics(
        &survivors,
        "the survivors take the killed replica's spaces",
        |texts| {
            let held: BTreeSet<String> = texts.iter().flat_map(|t| held_spaces(t)).collect();
            killed_spaces.is_subset(&held)
        },
    )
    .await;
    let taken_after = killed_at.elapsed();
    let duplicates = verify(&chat, &replicas[0].config, &acked, false).await;

    let mut takeovers = Vec::new();
    for space in &killed_spaces {
        let first = chat
            .requests_for(space)
            .iter()
            .map(|r| r.at)
            .filter(|at| *at > killed_at)
            .min()
            .expect("the new owner sent for the space");
        takeovers.push(first.duration_since(killed_at));
    }
    let slowest = takeovers.iter().max().copied().unwrap_or_default();
    println!(
        "kill -9 of a replica holding {} of {} spaces: leases taken over after {taken_after:?}, \
         first send by the new owner after {slowest:?} (fastest {:?}; lease {LEASE:?}, one \
         send every {:?})",
        killed_spaces.len(),
        spaces.len(),
        takeovers.iter().min(),
        Duration::from_secs_f64(1.0 / SLOW_RATE)
    );
    assert!(
        taken_after <= LEASE + Duration::from_millis(2500),
        "takeover took {taken_after:?}"
    );
    assert!(
        slowest <= LEASE + Duration::from_millis(3500),
        "the first send after the takeover took {slowest:?}"
    );
    let total_duplicates: usize = duplicates.values().sum();
    assert!(
        total_duplicates <= killed_spaces.len(),
        "{duplicates:?}, the killed replica held {killed_spaces:?}"
    );
    for (space, _) in &spaces {
        // Only a request the killed replica had in flight, whose answer it never recorded,
        // lets the new holder pace from an older answer: one early send, and a duplicate.
        let violations = pacing_violations(&chat.requests_for(space), started, SLOW_RATE);
        assert!(
            violations <= duplicates.get(space).copied().unwrap_or(0),
            "space {space}: {violations} pacing violations:\n{}",
            chat.describe(space)
        );
    }
    let texts = wait_metrics(&survivors, "survivors hold every space", |texts| {
        texts.iter().map(|t| held_spaces(t).len()).sum::<usize>() == spaces.len()
    })
    .await;
    let taken: f64 = texts
        .iter()
        .map(|t| metric_sum(t, "kabar_lease_takeovers_total"))
        .sum();
    assert!(taken >= 1.0, "the survivors count their takeovers");
    logs_clean(&replicas, &chat, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_lease_then_sigcont() {
    let Some(pg) = cluster() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(Some(1.0));
    let url = pg.database();
    let spaces = spaces(&chat, 6);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(SLOW_RATE));
    let replicas = start_fleet(3, &config, &url).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let held = wait_every_space_held_once(&all, spaces.len()).await;
    let (paused, paused_spaces) = busiest(&held);
    let started = Instant::now();
    // 3 messages a space, one every 5 s: the pause lands after the first, between sends.
    let acked = backlog(&replicas, &spaces, 2).await;
    wait_progress(&chat, &paused_spaces, 1).await;

    replicas[paused].process().signal("STOP");
    let stopped_at = Instant::now();
    let others: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != paused)
        .map(|(_, r)| r)
        .collect();
    wait_metrics(
        &others,
        "the others take the paused replica's spaces",
        |texts| {
            let held: BTreeSet<String> = texts.iter().flat_map(|t| held_spaces(t)).collect();
            paused_spaces.is_subset(&held)
        },
    )
    .await;
    // Past the lease, and the new owners have sent for every space they took.
    let requests_before: BTreeMap<&String, usize> = paused_spaces
        .iter()
        .map(|s| (s, chat.requests_for(s).len()))
        .collect();
    for (space, before) in &requests_before {
        if acked.iter().filter(|a| &&a.0 == space).count() > *before {
            chat.wait_for_requests(space, before + 1, WAIT).await;
        }
    }
    assert!(stopped_at.elapsed() > LEASE);
    replicas[paused].process().signal("CONT");
    let woken_at = Instant::now();
    let woken = [&replicas[paused]];
    wait_metrics(
        &woken,
        "the woken replica counts its lost leases",
        |texts| metric_sum(&texts[0], "kabar_lease_losses_total") >= 1.0,
    )
    .await;

    let duplicates = verify(&chat, &replicas[0].config, &acked, false).await;
    // A woken sender that sent on its lost lease would post, after SIGCONT, a message the
    // new holder had already posted. The one duplicate allowed is a request in flight at
    // SIGSTOP, which reached Chat before it.
    for space in &paused_spaces {
        let messages = chat.messages(space);
        for (_, alert, kind) in acked.iter().filter(|a| &a.0 == space) {
            let copies: Vec<Instant> = messages
                .iter()
                .filter(|m| is_message_for(m.text.as_deref().unwrap_or(""), alert, *kind))
                .map(|m| m.at)
                .collect();
            let first = copies.iter().min().copied();
            assert!(
                !(first.is_some_and(|f| f < woken_at) && copies.iter().any(|at| *at >= woken_at)),
                "{alert} {kind:?} posted again after SIGCONT: the woken replica sent on a lease \
                 it lost\n{}",
                chat.describe(space)
            );
        }
    }
    let total_duplicates: usize = duplicates.values().sum();
    assert!(
        total_duplicates <= paused_spaces.len(),
        "{duplicates:?}, the paused replica held {paused_spaces:?}"
    );
    for (space, _) in &spaces {
        let violations = pacing_violations(&chat.requests_for(space), started, SLOW_RATE);
        assert!(
            violations <= duplicates.get(space).copied().unwrap_or(0),
            "space {space}: {violations} pacing violations:\n{}",
            chat.describe(space)
        );
    }
    wait_every_space_held_once(&all, spaces.len()).await;
    logs_clean(&replicas, &chat, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() {
    let Some(pg) = PgCluster::start() else { return };
    let chat = FakeChat::start().await;
    chat.set_rate_limit(None);
    let url = pg.database();
    let spaces = spaces(&chat, 1);
    let config = fleet_config(&url, &spaces, |c| c.rate_limit_per_second(20.0));
    let replicas = start_fleet(1, &config, &url).await;
    let kabar = &replicas[0];
    let space = &spaces[0].0;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(post_acked(&kabar.url(""), space, &format!("Before{i}"), Kind::Firing).await);
    }

    let pg_ref = &pg;
    tokio::task::block_in_place(|| pg_ref.stop_server());
    let down_at = Instant::now();
    let mut bodies = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer, retry_after) =
            post(&kabar.url(""), space, "During", Kind::Firing).await;
        bodies.push_str(&answer.to_string());
        if status == 503 {
            assert!(retry_after.is_some(), "503 without Retry-After: {answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingest kept answering {status} with PostgreSQL down: {answer}"
        );
        if status == 200 {
            // Acknowledged before kabar noticed: it must still be delivered.
            acked.push((space.clone(), "During".to_owned(), Kind::Firing));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "ingest answered 503 {:?} after PostgreSQL stopped",
        down_at.elapsed()
    );
    bodies.push_str(&wait_ready(kabar, false).await);

    tokio::task::block_in_place(|| pg_ref.start_server());
    let up_at = Instant::now();
    wait_ready(kabar, true).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer, _) = post(&kabar.url(""), space, "After0", Kind::Firing).await;
        if status == 200 {
            assert_eq!(answer["queued"], 1, "{answer}");
            acked.push((space.clone(), "After0".to_owned(), Kind::Firing));
            break;
        }
        bodies.push_str(&answer.to_string());
        assert!(
            Instant::now() < deadline,
            "ingest never recovered: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "ingest answered 200 again {:?} after PostgreSQL started",
        up_at.elapsed()
    );
    let server_log = std::fs::read_to_string(pg.path().join("server.log")).unwrap_or_default();
    assert_eq!(
        server_log.matches("ready to accept connections").count(),
        2,
        "the server really went down and came back:\n{server_log}"
    );
    for i in 1..4 {
        acked.push(post_acked(&kabar.url(""), space, &format!("After{i}"), Kind::Firing).await);
    }
    for (_, alert, _) in acked.clone() {
        if alert.starts_with("Before") {
            acked.push(post_acked(&kabar.url(""), space, &alert, Kind::Resolved).await);
        }
    }
    let duplicates = verify(&chat, &kabar.config, &acked, false).await;
    assert!(
        duplicates.values().sum::<usize>() <= 1,
        "at most the request in flight at the outage repeats: {duplicates:?}"
    );
    logs_clean(&replicas, &chat, &bodies);
}

//! The governor's scheduling, deterministically: a paused clock, and waiting futures
//! polled by hand so the test decides exactly when each request arrives and looks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures::poll;
use rust_decimal::Decimal;

use super::*;
use crate::metrics::Metrics;

const LOCAL: &str = "local";
const REMOTE: &str = "remote";
const TIMEOUT: Duration = Duration::from_secs(60);
const AGING: Duration = Duration::from_secs(10);

type Waiter<'a> = Pin<Box<dyn Future<Output = Result<Permit, GovernorError>> + 'a>>;

fn settings(max_in_flight: usize) -> GovernorSettings {
    GovernorSettings {
        governor: GovernorConfig {
            max_in_flight,
            queue_capacity: PerClass([16; 3]),
            queue_timeout: TIMEOUT,
            aging: AGING,
            tenants: BTreeMap::new(),
        },
        agents: Vec::new(),
        backends: Vec::new(),
    }
}

fn agent(id: &str, tenant: &str, limits: AgentLimits) -> AgentSettings {
    AgentSettings {
        id: id.into(),
        tenant: tenant.into(),
        limits,
    }
}

fn governor(settings: GovernorSettings) -> (Governor, GovernorMetrics) {
    let metrics = Metrics::new().unwrap().governor;
    (Governor::new(settings, metrics.clone()), metrics)
}

fn ask(agent: &str, class: Priority) -> Admission<'_> {
    Admission {
        agent,
        tenant: "acme",
        priority: Some(class),
        backend: LOCAL,
    }
}

fn on<'a>(backend: &'static str, ask: Admission<'a>) -> Admission<'a> {
    Admission { backend, ..ask }
}

async fn now(governor: &Governor, ask: Admission<'_>) -> Permit {
    let mut admit = Box::pin(governor.admit(ask));
    match poll!(admit.as_mut()) {
        Poll::Ready(result) => result.unwrap(),
        Poll::Pending => panic!("expected a slot at once"),
    }
}

async fn queued<'a>(governor: &'a Governor, ask: Admission<'a>) -> Waiter<'a> {
    let mut waiter: Waiter<'a> = Box::pin(governor.admit(ask));
    assert!(poll!(waiter.as_mut()).is_pending(), "expected to wait");
    waiter
}

async fn refused(governor: &Governor, ask: Admission<'_>) -> GovernorError {
    let mut admit = Box::pin(governor.admit(ask));
    match poll!(admit.as_mut()) {
        Poll::Ready(result) => result.unwrap_err(),
        Poll::Pending => panic!("expected a refusal at once"),
    }
}

async fn answer(waiter: &mut Waiter<'_>) -> Option<Result<Permit, GovernorError>> {
    match poll!(waiter.as_mut()) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// Which of `waiters` have been granted a slot (polling each; grants are kept).
async fn granted(waiters: &mut [Waiter<'_>], permits: &mut Vec<Permit>) -> Vec<usize> {
    let mut ready = Vec::new();
    for (index, waiter) in waiters.iter_mut().enumerate() {
        if let Poll::Ready(result) = poll!(waiter.as_mut()) {
            permits.push(result.unwrap());
            ready.push(index);
        }
    }
    ready
}

fn total_queued(governor: &Governor) -> usize {
    governor.snapshot().queued.0.iter().sum()
}

#[tokio::test(start_paused = true)]
async fn classes_are_served_strictly_by_priority() {
    let (governor, _) = governor(settings(1));
    let running = now(&governor, ask("a", Priority::P1)).await;
    let mut waiters = vec![
        queued(&governor, ask("a", Priority::P2)).await,
        queued(&governor, ask("a", Priority::P1)).await,
        queued(&governor, ask("a", Priority::P0)).await,
    ];
    assert_eq!(governor.snapshot().queued, PerClass([1, 1, 1]));
    let mut permits = Vec::new();
    drop(running);
    assert_eq!(granted(&mut waiters, &mut permits).await, vec![2]);
    drop(permits.pop());
    assert_eq!(granted(&mut waiters[..2], &mut permits).await, vec![1]);
    drop(permits.pop());
    assert_eq!(granted(&mut waiters[..1], &mut permits).await, vec![0]);
    assert_eq!(permits[0].priority(), Priority::P2);
}

#[tokio::test(start_paused = true)]
async fn a_class_is_first_come_first_served() {
    let (governor, _) = governor(settings(1));
    let mut running = now(&governor, ask("a", Priority::P1)).await;
    let mut waiters = Vec::new();
    for _ in 0..4 {
        waiters.push(queued(&governor, ask("b", Priority::P1)).await);
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    for expected in 0..4 {
        drop(running);
        running = answer(&mut waiters[expected]).await.unwrap().unwrap();
        for later in &mut waiters[expected + 1..] {
            assert!(answer(later).await.is_none());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn aging_lifts_a_waiting_request_above_later_arrivals() {
    // With AGING = 10 s a P2 request ranks as a P0 request arriving 20 s after it.
    let (governor, _) = governor(settings(1));
    let started = tokio::time::Instant::now();
    let running = now(&governor, ask("a", Priority::P1)).await;
    // Each permit keeps the place it ranked at, for the engine's own line.
    assert_eq!(running.ranks_at(), started + AGING);
    let mut learning = queued(&governor, ask("a", Priority::P2)).await;
    tokio::time::advance(Duration::from_secs(15)).await;
    let mut early_incident = queued(&governor, ask("a", Priority::P0)).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut late_incident = queued(&governor, ask("a", Priority::P0)).await;

    drop(running);
    let first = answer(&mut early_incident).await.unwrap().unwrap();
    assert_eq!(first.ranks_at(), started + Duration::from_secs(15));
    assert!(answer(&mut learning).await.is_none());
    drop(first);
    let second = answer(&mut learning).await.unwrap().unwrap();
    assert_eq!(second.priority(), Priority::P2);
    assert_eq!(second.waited(), Duration::from_secs(25));
    assert_eq!(second.ranks_at(), started + 2 * AGING);
    assert!(answer(&mut late_incident).await.is_none());
    drop(second);
    assert!(answer(&mut late_incident).await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_global_cap_holds_across_agents_and_backends() {
    let (governor, _) = governor(settings(2));
    let _first = now(&governor, ask("a", Priority::P0)).await;
    let _second = now(&governor, on(REMOTE, ask("b", Priority::P0))).await;
    let _waiting = queued(&governor, on(REMOTE, ask("c", Priority::P0))).await;
    assert_eq!(governor.snapshot().in_flight, 2);
}

#[tokio::test(start_paused = true)]
async fn an_agents_cap_queues_that_agent_only() {
    let limits = AgentLimits {
        max_concurrent: Some(1),
        ..AgentLimits::default()
    };
    let mut settings = settings(8);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, _) = governor(settings);
    let first = now(&governor, ask("a", Priority::P0)).await;
    let mut second = queued(&governor, ask("a", Priority::P0)).await;
    let _other = now(&governor, ask("b", Priority::P2)).await;
    assert_eq!(governor.snapshot().agents["a"].in_flight, 1);
    drop(first);
    assert!(answer(&mut second).await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_backends_slots_queue_that_backend_only() {
    let (governor, _) = governor(settings(8).backend(LOCAL, 1));
    let first = now(&governor, ask("a", Priority::P0)).await;
    let mut second = queued(&governor, ask("b", Priority::P0)).await;
    let _remote = now(&governor, on(REMOTE, ask("c", Priority::P2))).await;
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.backends[LOCAL].in_flight, 1);
    assert_eq!(snapshot.backends[REMOTE].in_flight, 1);
    drop(first);
    assert!(answer(&mut second).await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_request_moving_on_frees_its_backend_slot_but_keeps_its_place() {
    let (governor, _) = governor(settings(2).backend(LOCAL, 1));
    let mut escalated = now(&governor, ask("a", Priority::P1)).await;
    let mut next_local = queued(&governor, ask("b", Priority::P1)).await;
    escalated.move_to(REMOTE).unwrap();
    let local = answer(&mut next_local).await.unwrap().unwrap();
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.in_flight, 2);
    assert_eq!(snapshot.backends[LOCAL].in_flight, 1);
    assert_eq!(snapshot.backends[REMOTE].in_flight, 1);
    // The local slot is taken again: moving back is refused, and nothing changes.
    let busy = escalated.move_to(LOCAL).unwrap_err();
    assert!(matches!(busy, GovernorError::BackendBusy { limit: 1, .. }));
    assert_eq!(governor.snapshot().backends[REMOTE].in_flight, 1);
    drop((escalated, local));
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.in_flight, 0);
    assert_eq!(snapshot.backends[LOCAL].in_flight, 0);
    assert_eq!(snapshot.backends[REMOTE].in_flight, 0);
}

/// Waits for the local backend, or for `REMOTE` once it has waited `after`.
fn local_or_remote<'a>(governor: &'a Governor, agent: &'a str, after: Duration) -> Waiter<'a> {
    let fallback = QueueFallback {
        after,
        backend: REMOTE,
    };
    Box::pin(governor.admit_or_move(ask(agent, Priority::P1), fallback))
}

#[tokio::test(start_paused = true)]
async fn a_request_still_queued_at_its_fallback_moves_to_that_backend() {
    let (governor, _) = governor(settings(8).backend(LOCAL, 1).backend(REMOTE, 1));
    let local = now(&governor, ask("a", Priority::P1)).await;
    let mut waiter = local_or_remote(&governor, "b", Duration::from_secs(2));
    assert!(answer(&mut waiter).await.is_none());
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(answer(&mut waiter).await.is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    let moved = answer(&mut waiter).await.unwrap().unwrap();
    assert!(moved.moved());
    assert_eq!(moved.waited(), Duration::from_secs(2));
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.backends[LOCAL].in_flight, 1);
    assert_eq!(snapshot.backends[REMOTE].in_flight, 1);
    drop((local, moved));
    assert_eq!(governor.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_moved_request_keeps_its_place_in_line_for_the_new_backend() {
    let (governor, _) = governor(settings(8).backend(LOCAL, 1).backend(REMOTE, 1));
    let local = now(&governor, ask("a", Priority::P1)).await;
    let remote = now(&governor, on(REMOTE, ask("c", Priority::P1))).await;
    let mut waiter = local_or_remote(&governor, "b", Duration::from_secs(2));
    assert!(answer(&mut waiter).await.is_none());
    tokio::time::advance(Duration::from_secs(1)).await;
    // Arrives after the waiter, before it moves: it stays behind.
    let mut later = queued(&governor, on(REMOTE, ask("d", Priority::P1))).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(answer(&mut waiter).await.is_none());
    // Moved, it waits for the remote backend only: a free local slot is not its own.
    drop(local);
    assert!(answer(&mut waiter).await.is_none());
    drop(remote);
    let moved = answer(&mut waiter).await.unwrap().unwrap();
    assert!(moved.moved());
    assert_eq!(moved.waited(), Duration::from_secs(3));
    assert!(answer(&mut later).await.is_none());
    drop(moved);
    assert!(answer(&mut later).await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_request_granted_before_its_fallback_stays_where_it_asked() {
    let (governor, _) = governor(settings(8).backend(LOCAL, 1).backend(REMOTE, 1));
    let local = now(&governor, ask("a", Priority::P1)).await;
    let mut waiter = local_or_remote(&governor, "b", Duration::from_secs(2));
    assert!(answer(&mut waiter).await.is_none());
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(local);
    let stayed = answer(&mut waiter).await.unwrap().unwrap();
    assert!(!stayed.moved());
    assert_eq!(governor.snapshot().backends[LOCAL].in_flight, 1);
    assert_eq!(governor.snapshot().backends[REMOTE].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_due_after_the_queue_timeout_never_moves() {
    let (governor, _) = governor(settings(8).backend(LOCAL, 1).backend(REMOTE, 1));
    let _local = now(&governor, ask("a", Priority::P1)).await;
    let mut waiter = local_or_remote(&governor, "b", TIMEOUT);
    assert!(answer(&mut waiter).await.is_none());
    tokio::time::advance(TIMEOUT).await;
    let error = answer(&mut waiter).await.unwrap().unwrap_err();
    assert!(matches!(error, GovernorError::QueueTimeout { .. }));
    assert_eq!(governor.snapshot().backends[REMOTE].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_blocked_by_its_own_cap_does_not_hold_up_others() {
    let limits = AgentLimits {
        max_concurrent: Some(1),
        ..AgentLimits::default()
    };
    let mut settings = settings(2);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, _) = governor(settings);
    let _a_running = now(&governor, ask("a", Priority::P2)).await;
    let b_running = now(&governor, ask("b", Priority::P2)).await;
    let mut a_urgent = queued(&governor, ask("a", Priority::P0)).await;
    let mut b_learning = queued(&governor, ask("b", Priority::P2)).await;
    drop(b_running);
    assert!(answer(&mut a_urgent).await.is_none());
    assert!(answer(&mut b_learning).await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_full_class_is_refused_at_once_with_retry_after() {
    let mut settings = settings(1);
    settings.governor.queue_capacity = PerClass([1, 1, 1]);
    let (governor, metrics) = governor(settings);
    let _running = now(&governor, ask("a", Priority::P0)).await;
    let _waiting = queued(&governor, ask("a", Priority::P2)).await;
    let error = refused(&governor, ask("b", Priority::P2)).await;
    assert!(
        matches!(error, GovernorError::QueueFull { class: Priority::P2, capacity: 1, retry_after } if retry_after >= Duration::from_secs(1)),
        "{error:?}"
    );
    let _other_class = queued(&governor, ask("b", Priority::P1)).await;
    assert_eq!(
        metrics.rejections.with_label_values(&["queue_full"]).get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_class_with_no_queue_answers_at_once() {
    let mut settings = settings(1);
    settings.governor.queue_capacity = PerClass([4, 4, 0]);
    let (governor, _) = governor(settings);
    let _running = now(&governor, ask("a", Priority::P0)).await;
    let error = refused(&governor, ask("a", Priority::P2)).await;
    assert!(
        matches!(error, GovernorError::QueueFull { .. }),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_queue_timeout_is_refused_and_leaves_the_queue() {
    let (governor, metrics) = governor(settings(1));
    let _running = now(&governor, ask("a", Priority::P1)).await;
    // The paused clock jumps to the deadline once nothing else can run.
    let error = governor.admit(ask("b", Priority::P1)).await.unwrap_err();
    assert!(
        matches!(error, GovernorError::QueueTimeout { class: Priority::P1, waited, .. } if waited == TIMEOUT),
        "{error:?}"
    );
    assert_eq!(
        error.retry_after().map(|d| d >= Duration::from_secs(1)),
        Some(true)
    );
    assert_eq!(total_queued(&governor), 0);
    assert_eq!(
        metrics
            .rejections
            .with_label_values(&["queue_timeout"])
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_the_queue_gives_its_place_back_at_once() {
    let mut settings = settings(1);
    settings.governor.queue_capacity = PerClass([1, 1, 1]);
    let (governor, _) = governor(settings);
    let running = now(&governor, ask("a", Priority::P1)).await;
    let leaving = queued(&governor, ask("b", Priority::P1)).await;
    assert!(matches!(
        refused(&governor, ask("b", Priority::P1)).await,
        GovernorError::QueueFull { .. }
    ));
    drop(leaving);
    assert_eq!(total_queued(&governor), 0);
    let mut staying = queued(&governor, ask("b", Priority::P1)).await;
    drop(running);
    let permit = answer(&mut staying).await.unwrap().unwrap();
    assert_eq!(governor.snapshot().in_flight, 1);
    drop(permit);
    assert_eq!(governor.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_grant_nobody_collects_is_given_back() {
    let (governor, _) = governor(settings(1));
    let running = now(&governor, ask("a", Priority::P1)).await;
    let gone = queued(&governor, ask("b", Priority::P1)).await;
    let mut next = queued(&governor, ask("c", Priority::P1)).await;
    // The slot is granted to `gone`, whose client leaves before it looks.
    drop(running);
    assert_eq!(governor.snapshot().in_flight, 1);
    drop(gone);
    let permit = answer(&mut next).await.unwrap().unwrap();
    drop(permit);
    let snapshot = governor.snapshot();
    assert_eq!((snapshot.in_flight, total_queued(&governor)), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_running_request_frees_every_cap() {
    let limits = AgentLimits {
        max_concurrent: Some(1),
        ..AgentLimits::default()
    };
    let mut settings = settings(4).backend(LOCAL, 1);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, metrics) = governor(settings);
    let permit = now(&governor, ask("a", Priority::P1)).await;
    assert_eq!(metrics.in_flight.with_label_values(&[LOCAL]).get(), 1);
    drop(permit);
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.in_flight, 0);
    assert_eq!(snapshot.agents["a"].in_flight, 0);
    assert_eq!(snapshot.backends[LOCAL].in_flight, 0);
    assert_eq!(metrics.in_flight.with_label_values(&[LOCAL]).get(), 0);
    let _again = now(&governor, ask("a", Priority::P1)).await;
}

#[tokio::test(start_paused = true)]
async fn kill_switches_stop_queued_and_new_requests_until_cleared() {
    let mut settings = settings(1);
    settings
        .agents
        .push(agent("a", "acme", AgentLimits::default()));
    settings
        .agents
        .push(agent("b", "acme", AgentLimits::default()));
    settings
        .agents
        .push(agent("c", "globex", AgentLimits::default()));
    let (governor, _) = governor(settings);
    let running = now(&governor, ask("b", Priority::P1)).await;
    let mut a_waiting = queued(&governor, ask("a", Priority::P0)).await;
    let mut c_waiting = queued(&governor, ask("c", Priority::P1)).await;

    let agent_a = KillScope::Agent("a".into());
    assert_eq!(governor.engage(agent_a.clone(), "runaway loop"), Ok(1));
    let error = answer(&mut a_waiting).await.unwrap().unwrap_err();
    assert!(
        matches!(&error, GovernorError::KillSwitch { scope, reason } if *scope == agent_a && reason == "runaway loop"),
        "{error:?}"
    );
    assert!(answer(&mut c_waiting).await.is_none());
    assert!(matches!(
        refused(&governor, ask("a", Priority::P0)).await,
        GovernorError::KillSwitch { .. }
    ));

    // A tenant's switch covers its agents, a running request finishes.
    let acme = KillScope::Tenant("acme".into());
    assert_eq!(governor.engage(acme.clone(), "invoice dispute"), Ok(0));
    assert!(matches!(
        refused(&governor, ask("b", Priority::P0)).await,
        GovernorError::KillSwitch { scope, .. } if scope == acme
    ));
    assert_eq!(governor.engage(KillScope::Global, "outage"), Ok(1));
    assert!(answer(&mut c_waiting).await.unwrap().is_err());
    drop(running);

    assert_eq!(governor.clear(&KillScope::Global), Ok(true));
    assert_eq!(governor.clear(&KillScope::Global), Ok(false));
    assert_eq!(governor.clear(&acme), Ok(true));
    assert_eq!(governor.clear(&agent_a), Ok(true));
    let _served = now(&governor, ask("a", Priority::P1)).await;
    let unknown = governor.engage(KillScope::Agent("nobody".into()), "typo");
    assert_eq!(unknown.unwrap_err().kind, "agent");
    assert!(governor
        .clear(&KillScope::Tenant("nowhere".into()))
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_refill_over_time() {
    let limits = AgentLimits {
        requests_per_minute: Some(2),
        ..AgentLimits::default()
    };
    let mut settings = settings(8);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, metrics) = governor(settings);
    drop(now(&governor, ask("a", Priority::P1)).await);
    drop(now(&governor, ask("a", Priority::P1)).await);
    let error = refused(&governor, ask("a", Priority::P1)).await;
    assert_eq!(
        error,
        GovernorError::RateLimited {
            agent: "a".into(),
            limit: RateLimit::Requests,
            per_minute: 2,
            retry_after: Duration::from_secs(30),
        }
    );
    // Another agent is not affected.
    drop(now(&governor, ask("b", Priority::P1)).await);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(matches!(
        refused(&governor, ask("a", Priority::P1)).await,
        GovernorError::RateLimited { .. }
    ));
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(now(&governor, ask("a", Priority::P1)).await);
    assert_eq!(
        metrics
            .rate_limited
            .with_label_values(&["a", "requests"])
            .get(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_are_debited_at_completion() {
    let limits = AgentLimits {
        tokens_per_minute: Some(600),
        ..AgentLimits::default()
    };
    let mut settings = settings(8);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, _) = governor(settings);
    // Both start while the bucket is full; their tokens are counted when they finish.
    let first = now(&governor, ask("a", Priority::P1)).await;
    let second = now(&governor, ask("a", Priority::P1)).await;
    first.charge(500, None);
    second.charge(500, None);
    drop((first, second));
    // 400 in debt plus one token, refilled at 10 a second.
    let error = refused(&governor, ask("a", Priority::P1)).await;
    assert!(
        matches!(error, GovernorError::RateLimited { limit: RateLimit::Tokens, retry_after, .. } if retry_after == Duration::from_secs_f64(40.1)),
        "{error:?}"
    );
    tokio::time::advance(Duration::from_secs_f64(40.1)).await;
    drop(now(&governor, ask("a", Priority::P1)).await);
}

#[tokio::test(start_paused = true)]
async fn spend_caps_refuse_the_agent_and_the_tenant_once_spent() {
    let usd = |text: &str| text.parse::<Decimal>().unwrap();
    let capped = AgentLimits {
        spend: SpendCaps {
            daily: Some(usd("0.05")),
            monthly: None,
        },
        ..AgentLimits::default()
    };
    let mut settings = settings(8);
    settings.agents.push(agent("a", "acme", capped));
    settings
        .agents
        .push(agent("b", "acme", AgentLimits::default()));
    settings
        .agents
        .push(agent("c", "globex", AgentLimits::default()));
    settings.governor.tenants.insert(
        "acme".into(),
        SpendCaps {
            daily: None,
            monthly: Some(usd("0.10")),
        },
    );
    let (governor, _) = governor(settings);

    let permit = now(&governor, ask("a", Priority::P1)).await;
    permit.charge(10, Some(usd("0.03")));
    drop(permit);
    // Under the cap: admitted, and this one crosses it.
    let permit = now(&governor, ask("a", Priority::P1)).await;
    permit.charge(10, Some(usd("0.03")));
    drop(permit);
    let error = refused(&governor, ask("a", Priority::P1)).await;
    assert!(
        matches!(&error, GovernorError::BudgetExceeded { scope: BudgetScope::Agent(id), period: Period::Daily, spent, .. } if id == "a" && *spent == usd("0.06")),
        "{error:?}"
    );
    assert!(
        matches!(error, GovernorError::BudgetExceeded { resets_in, .. } if resets_in <= Duration::from_secs(24 * 3600))
    );
    assert_eq!(error.retry_after(), None);

    let permit = now(&governor, ask("b", Priority::P1)).await;
    permit.charge(10, Some(usd("0.04")));
    drop(permit);
    let error = refused(&governor, ask("b", Priority::P1)).await;
    assert!(
        matches!(&error, GovernorError::BudgetExceeded { scope: BudgetScope::Tenant(id), period: Period::Monthly, .. } if id == "acme"),
        "{error:?}"
    );
    // Another tenant's agent is unaffected.
    drop(now(&governor, ask("c", Priority::P1)).await);
    let snapshot = governor.snapshot();
    assert_eq!(snapshot.tenants["acme"].this_month_usd, usd("0.10"));
    assert_eq!(snapshot.agents["a"].spend.today_usd, usd("0.06"));
}

#[tokio::test(start_paused = true)]
async fn priority_defaults_and_ceilings_come_from_the_agent() {
    let limits = AgentLimits {
        priority_ceiling: Priority::P1,
        default_priority: Priority::P2,
        ..AgentLimits::default()
    };
    let mut settings = settings(8);
    settings.agents.push(agent("a", "acme", limits));
    let (governor, _) = governor(settings);
    let asked_p0 = now(&governor, ask("a", Priority::P0)).await;
    assert_eq!(asked_p0.priority(), Priority::P1);
    let unspecified = now(
        &governor,
        Admission {
            priority: None,
            ..ask("a", Priority::P0)
        },
    )
    .await;
    assert_eq!(unspecified.priority(), Priority::P2);
    let other = now(&governor, ask("b", Priority::P0)).await;
    assert_eq!(other.priority(), Priority::P0);
}

mod property {
    //! Random arrivals, cancellations, completions, kill switches, time, and clients
    //! looking at their answers at random moments (a grant may wait uncollected while
    //! its client leaves): the caps hold at every step, every slot and queue entry
    //! belongs to a live request, and every request ends exactly once.

    use super::*;
    use proptest::prelude::*;

    const AGENTS: [&str; 3] = ["a", "b", "c"];
    const BACKENDS: [&str; 2] = [LOCAL, REMOTE];
    const GLOBAL: usize = 3;
    const AGENT_CAP: usize = 2;
    const LOCAL_SLOTS: usize = 2;

    #[derive(Debug, Clone)]
    enum Op {
        Arrive {
            agent: usize,
            class: usize,
            backend: usize,
        },
        Cancel(usize),
        Finish(usize),
        Advance(u64),
        Kill(usize),
        Clear(usize),
        Look,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, 0..3usize, 0..2usize)
                .prop_map(|(agent, class, backend)| Op::Arrive { agent, class, backend }),
            2 => any::<usize>().prop_map(Op::Cancel),
            4 => any::<usize>().prop_map(Op::Finish),
            2 => (0..25_000u64).prop_map(Op::Advance),
            1 => (0..3usize).prop_map(Op::Kill),
            1 => (0..3usize).prop_map(Op::Clear),
            3 => Just(Op::Look),
        ]
    }

    enum Request<'a> {
        /// Queued, or granted without having looked yet.
        Waiting(Waiter<'a>),
        Running(#[allow(dead_code)] Permit),
        Served,
        /// Refused when it arrived, or later when its client looked.
        Refused {
            on_arrival: bool,
            reason: &'static str,
        },
        Cancelled,
    }

    fn settings() -> GovernorSettings {
        let mut settings = super::settings(GLOBAL).backend(LOCAL, LOCAL_SLOTS);
        settings.governor.queue_capacity = PerClass([3, 3, 3]);
        settings.governor.queue_timeout = Duration::from_secs(30);
        settings.governor.aging = Duration::from_secs(5);
        for id in AGENTS {
            let limits = AgentLimits {
                max_concurrent: Some(AGENT_CAP),
                ..AgentLimits::default()
            };
            settings.agents.push(agent(id, "acme", limits));
        }
        settings
    }

    /// Moves every answered waiter to running or refused.
    async fn collect(requests: &mut [Request<'_>]) {
        for request in requests.iter_mut() {
            if let Request::Waiting(waiter) = request {
                match poll!(waiter.as_mut()) {
                    Poll::Ready(Ok(permit)) => *request = Request::Running(permit),
                    Poll::Ready(Err(error)) => {
                        *request = Request::Refused {
                            on_arrival: false,
                            reason: error.code(),
                        }
                    }
                    Poll::Pending => {}
                }
            }
        }
    }

    fn check_caps(governor: &Governor, requests: &[Request<'_>]) {
        let snapshot = governor.snapshot();
        let running = requests
            .iter()
            .filter(|r| matches!(r, Request::Running(_)))
            .count();
        let waiting = requests
            .iter()
            .filter(|r| matches!(r, Request::Waiting(_)))
            .count();
        // Every slot and every queue entry belongs to a live request: running, queued,
        // or granted and not yet collected. (A waiter refused by a kill switch holds
        // neither until it looks, hence not equality.)
        assert!(snapshot.in_flight + snapshot.queued.0.iter().sum::<usize>() <= running + waiting);
        assert!(snapshot.in_flight <= GLOBAL);
        assert!(snapshot.backends.get(LOCAL).map_or(0, |b| b.in_flight) <= LOCAL_SLOTS);
        for agent in snapshot.agents.values() {
            assert!(agent.in_flight <= AGENT_CAP);
        }
        let by_backend: usize = snapshot.backends.values().map(|b| b.in_flight).sum();
        assert_eq!(by_backend, snapshot.in_flight);
    }

    async fn run(ops: Vec<Op>) {
        let (governor, metrics) = governor(settings());
        let mut requests: Vec<Request<'_>> = Vec::new();
        // Queued requests refused by kill switches, whether or not they looked after.
        let mut killed_in_queue = 0;
        for op in ops {
            match op {
                Op::Arrive {
                    agent,
                    class,
                    backend,
                } => {
                    let ask = Admission {
                        agent: AGENTS[agent],
                        tenant: "acme",
                        priority: Some(Priority::ALL[class]),
                        backend: BACKENDS[backend],
                    };
                    let mut waiter: Waiter<'_> = Box::pin(governor.admit(ask));
                    // Arriving means asking: a refusal or a free slot answers at once.
                    requests.push(match poll!(waiter.as_mut()) {
                        Poll::Ready(Ok(permit)) => Request::Running(permit),
                        Poll::Ready(Err(error)) => Request::Refused {
                            on_arrival: true,
                            reason: error.code(),
                        },
                        Poll::Pending => Request::Waiting(waiter),
                    });
                }
                Op::Cancel(index) if !requests.is_empty() => {
                    let index = index % requests.len();
                    if let Request::Waiting(_) = requests[index] {
                        requests[index] = Request::Cancelled;
                    }
                }
                Op::Finish(index) if !requests.is_empty() => {
                    let index = index % requests.len();
                    if let Request::Running(_) = requests[index] {
                        requests[index] = Request::Served;
                    }
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Kill(agent) => {
                    killed_in_queue += governor
                        .engage(KillScope::Agent(AGENTS[agent].into()), "test")
                        .unwrap();
                }
                Op::Clear(agent) => {
                    governor
                        .clear(&KillScope::Agent(AGENTS[agent].into()))
                        .unwrap();
                }
                Op::Look => collect(&mut requests).await,
                Op::Cancel(_) | Op::Finish(_) => {}
            }
            check_caps(&governor, &requests);
        }

        // Wind down: finish what runs, let time pass; nothing may stay waiting.
        for _ in 0..requests.len() + 2 {
            for request in requests.iter_mut() {
                if let Request::Running(_) = request {
                    *request = Request::Served;
                }
            }
            tokio::time::advance(Duration::from_secs(31)).await;
            collect(&mut requests).await;
            check_caps(&governor, &requests);
        }
        let snapshot = governor.snapshot();
        assert_eq!(snapshot.in_flight, 0);
        assert_eq!(snapshot.queued.0.iter().sum::<usize>(), 0);
        let (mut refusals, mut kills_seen_late) = (0, 0);
        for request in &requests {
            match request {
                Request::Served | Request::Cancelled => {}
                Request::Refused {
                    on_arrival: false,
                    reason: "kill_switch",
                } => kills_seen_late += 1,
                Request::Refused { .. } => refusals += 1,
                Request::Waiting(_) | Request::Running(_) => panic!("a request never ended"),
            }
        }
        assert!(kills_seen_late <= killed_in_queue);
        let refusals = refusals + killed_in_queue as u64;
        // Each refusal was counted once, and nothing else was.
        let counted: u64 = GovernorError::CODES
            .iter()
            .map(|reason| metrics.rejections.with_label_values(&[reason]).get())
            .sum();
        assert_eq!(counted, refusals);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn caps_hold_and_nothing_leaks_or_hangs(ops in proptest::collection::vec(op(), 1..80)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(run(ops));
        }
    }
}

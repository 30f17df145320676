use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const IDLE: Duration = Duration::from_secs(10);
const AGE: Duration = Duration::from_secs(100);
const GRACE: Duration = Duration::from_secs(20);

fn lifetime() -> Lifetime {
    Lifetime {
        idle: Some(IDLE),
        max_age: Some(AGE),
        max_age_grace: GRACE,
    }
}

#[test]
fn a_connection_without_calls_is_closed_after_the_idle_timeout() {
    let t0 = Instant::now();
    let s = |n| Duration::from_secs(n);
    assert_eq!(
        verdict(t0 + s(5), t0, t0, 0, lifetime()),
        Verdict::CheckAt(Some(t0 + IDLE))
    );
    assert_eq!(
        verdict(t0 + IDLE, t0, t0, 0, lifetime()),
        Verdict::Close(Reason::Idle)
    );
    // A call that ended at 8 s pushes the deadline to 18 s.
    assert_eq!(
        verdict(t0 + IDLE, t0, t0 + s(8), 0, lifetime()),
        Verdict::CheckAt(Some(t0 + s(18)))
    );
}

#[test]
fn a_call_in_progress_is_not_idleness() {
    let t0 = Instant::now();
    let now = t0 + Duration::from_secs(50);
    assert_eq!(
        verdict(now, t0, t0, 1, lifetime()),
        Verdict::CheckAt(Some(now + IDLE))
    );
}

#[test]
fn past_the_maximum_age_and_its_grace_a_connection_is_closed_under_its_calls() {
    let t0 = Instant::now();
    let never_idle = Lifetime {
        idle: None,
        ..lifetime()
    };
    assert_eq!(
        verdict(
            t0 + AGE + GRACE - Duration::from_millis(1),
            t0,
            t0,
            3,
            never_idle
        ),
        Verdict::CheckAt(Some(t0 + AGE + GRACE))
    );
    assert_eq!(
        verdict(t0 + AGE + GRACE, t0, t0, 3, never_idle),
        Verdict::Close(Reason::MaxAge)
    );
    assert_eq!(
        verdict(t0 + AGE + GRACE, t0, t0, 3, lifetime()),
        Verdict::Close(Reason::MaxAge)
    );
}

#[test]
fn past_the_maximum_age_a_connection_is_closed_once_its_calls_are_over() {
    let t0 = Instant::now();
    let never_idle = Lifetime {
        idle: None,
        ..lifetime()
    };
    let old = t0 + AGE + GOAWAY_HEADSTART;
    assert_eq!(
        verdict(t0, t0, t0, 0, never_idle),
        Verdict::CheckAt(Some(old))
    );
    assert_eq!(
        verdict(old, t0, t0, 0, never_idle),
        Verdict::Close(Reason::MaxAge)
    );
    // With a call: looked at again soon, closed when it is over.
    assert_eq!(
        verdict(old, t0, t0, 1, never_idle),
        Verdict::CheckAt(Some(old + OLD_RECHECK))
    );
    assert_eq!(
        verdict(old + OLD_RECHECK, t0, old, 0, never_idle),
        Verdict::Close(Reason::MaxAge)
    );
}

#[test]
fn without_limits_nothing_is_watched() {
    let lifetimes = Lifetimes::new(Lifetime {
        idle: None,
        max_age: None,
        max_age_grace: GRACE,
    });
    assert!(lifetimes
        .watchdog("127.0.0.1:1".parse().expect("addr"))
        .is_none());
}

fn places() -> Places {
    Places {
        _total: None,
        _peer: None,
    }
}

/// A watched connection over an in-memory pipe, and the pipe's other end.
fn watched(
    lifetimes: &Lifetimes,
    peer: SocketAddr,
) -> (Limited<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1024);
    let conn = Limited::new(ours, places(), lifetimes.watchdog(peer));
    (conn, theirs)
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_ends_an_idle_connection_and_spares_one_with_a_call() {
    let lifetimes = Lifetimes::new(Lifetime {
        max_age: None,
        ..lifetime()
    });
    let idle_peer: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let busy_peer: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
    let (mut idle, _idle_end) = watched(&lifetimes, idle_peer);
    let (mut busy, mut busy_end) = watched(&lifetimes, busy_peer);
    let call = lifetimes.activity(busy_peer).expect("registered").begin();

    let started = Instant::now();
    let mut buf = [0u8; 8];
    let err = idle.read(&mut buf).await.expect_err("closed when idle");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), IDLE);

    // The busy one still works long after, while its call lasts.
    tokio::time::sleep(IDLE * 5).await;
    busy_end.write_all(b"ping").await.expect("write");
    assert_eq!(busy.read(&mut buf).await.expect("read"), 4);

    // Its call ends: idle from then on.
    drop(call);
    let ended = Instant::now();
    let err = busy.read(&mut buf).await.expect_err("closed when idle");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(ended.elapsed() >= IDLE, "{:?}", ended.elapsed());
    assert!(ended.elapsed() <= IDLE * 2, "{:?}", ended.elapsed());
    // Writes fail too, so a peer that stops reading cannot keep it.
    assert!(busy.write_all(b"x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_ends_an_old_connection_after_the_grace_even_with_a_call() {
    let lifetimes = Lifetimes::new(Lifetime {
        idle: None,
        ..lifetime()
    });
    let peer: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let (mut conn, _end) = watched(&lifetimes, peer);
    let _call = lifetimes.activity(peer).expect("registered").begin();
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let err = conn.read(&mut buf).await.expect_err("closed");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), AGE + GRACE);
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_forgotten_but_not_a_newer_one_from_its_address() {
    let lifetimes = Lifetimes::new(lifetime());
    let peer: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let (old, _a) = watched(&lifetimes, peer);
    let (new, _b) = watched(&lifetimes, peer);
    drop(old);
    let current = lifetimes.activity(peer).expect("the newer one");
    assert!(Arc::ptr_eq(
        &current,
        &new.watchdog.as_ref().expect("watched").activity
    ));
    drop(new);
    assert!(lifetimes.activity(peer).is_none());
}

#[tokio::test(start_paused = true)]
async fn the_calls_layer_counts_a_call_until_its_body_is_dropped() {
    use tower::{Layer, Service, ServiceExt};
    let lifetimes = Lifetimes::new(lifetime());
    let peer: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let (_conn, _end) = watched(&lifetimes, peer);
    let mut svc = lifetimes
        .layer()
        .layer(tower::service_fn(|_req: http::Request<()>| async {
            // A body not over yet, as a response's is until its trailers.
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"reply"));
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
        }));
    let mut req = http::Request::new(());
    req.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer),
    });
    let activity = lifetimes.activity(peer).expect("registered");
    let response = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("call");
    assert_eq!(activity.in_flight.load(Ordering::SeqCst), 1);
    drop(response);
    assert_eq!(activity.in_flight.load(Ordering::SeqCst), 0);
}

//! The status page of `fleet watch --listen` in a real browser (Debian's chromium, headless,
//! driven through chromedriver) on the real engine with the fake GitHub: a GPU pool on the
//! stand-in NVML and an autoscaled pool.

mod common;
#[path = "support/watch.rs"]
#[allow(dead_code)] // `metrics` and `sample` serve the other tests.
mod watch_process;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::process::Command;
use std::time::{Duration, Instant};

use common::nvml::{NvmlStub, StubGpu, StubInit};
use common::{TEST_IMAGE, World, pool, stderr};
use fake_github::{Config, ScaleSetConfig};
use serde_json::Value;
use watch_process::{WatchProcess, free_port, http_get, listening_scale_set};
use webdriver::Browser;

/// A name from GitHub that tries to be markup and to reorder itself.
const HOSTILE: &str =
    "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>\u{202e}gnp.exe";

fn world() -> World {
    World::with_fake(Config {
        scaleset: ScaleSetConfig {
            long_poll: Duration::from_millis(300),
            session_timeout: Duration::from_secs(3),
            ..ScaleSetConfig::default()
        },
        ..Config::default()
    })
}

/// Waits until `check` holds in the page, at most `limit`; fails with the page's text.
fn until(browser: &Browser, watch: &WatchProcess, limit: Duration, what: &str, check: &str) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if browser.script(check) == Value::Bool(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = browser.script("return document.body.innerText;");
    panic!(
        "timed out waiting for {what} in the page:\n{}\nwatch log:\n{}",
        text.as_str().unwrap_or_default(),
        watch.log()
    );
}

/// A JavaScript string literal of `s`.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// The runner's row says busy and names the job it runs.
fn running_check(runner: &str, job_name: &str) -> String {
    format!(
        "const r = document.querySelector('tr[data-runner=' + CSS.escape({r}) + ']');
         return !!r && r.children[3].textContent === 'busy'
           && r.querySelector('td.job .job-name').textContent === {j};",
        r = js(runner),
        j = js(job_name)
    )
}

fn row_check(runner: &str, host: &str, pool: &str, gpu: &str) -> String {
    format!(
        "const r = document.querySelector('tr[data-runner=' + CSS.escape({r}) + ']');
         if (!r) return false;
         const c = Array.from(r.children).map((td) => td.textContent);
         return c[0] === {r} && c[1] === {h} && c[2] === {p} && c[5].includes({g});",
        r = js(runner),
        h = js(host),
        p = js(pool),
        g = js(gpu)
    )
}

#[test]
fn the_page_shows_runners_gpus_and_jobs_live_renders_hostile_names_as_text_and_loads_nothing_else()
{
    let w = world();
    // The third GPU no runner is given: the stand-in reports a process on it, so it is dirty.
    let mut gpus = [
        StubGpu::numbered(0),
        StubGpu::numbered(1),
        StubGpu {
            processes: 1,
            ..StubGpu::numbered(2)
        },
    ];
    let stub = NvmlStub::new(w.dir.path(), &gpus);
    let pools = format!(
        "{}    gpus: 1\n  auto:\n    image: {TEST_IMAGE}\n    pull: never\n    network: none\n    autoscale: {{ min_idle: 0, max: 1 }}\n",
        pool("gpu", 2, true)
    );
    let spec = w.spec_gpus_auto(&pools);
    let names = w.gpu_runners(&stub, &spec, 2);
    // A registration fleet owns (its name starts with the fleet's) that no container runs:
    // online and busy, so it is kept, and shown by its name, which GitHub took as given.
    let hostile = format!("{}-{HOSTILE}", w.run);
    w.register(&hostile, true, true, true);

    let watch = WatchProcess::start(&w, &["--resync", "1s"], &stub.env());
    let port = watch.metrics_port;
    let scale_set = listening_scale_set(&w, &watch, "auto");
    watch.eventually(Duration::from_secs(60), "a first observation", || {
        http_get(port, "/api/v1/status").is_some()
    });

    let browser = Browser::start();
    let base = format!("http://127.0.0.1:{port}");
    browser.goto(&format!("{base}/"));
    browser.script("window.__sameDocument = true; return true;");

    // Every runner with its host, pool and GPU.
    for name in &names {
        let gpu = w.ledger(name);
        until(
            &browser,
            &watch,
            Duration::from_secs(30),
            name,
            &row_check(name, "local", "gpu", &gpu),
        );
    }
    // The GPU grid: each GPU with its holder and a chart with data points (one every 5 s).
    for g in &gpus {
        until(
            &browser,
            &watch,
            Duration::from_secs(40),
            "a chart with two points",
            &format!(
                "const c = document.querySelector('[data-gpu=' + CSS.escape({u}) + '] svg.chart');
                 return !!c && Number(c.dataset.points) >= 2 && !!c.querySelector('polyline');",
                u = js(&g.uuid)
            ),
        );
    }

    // Watch records history here (STATE_DIRECTORY): the charts and events come from its database.
    let history: Value =
        serde_json::from_str(&http_get(port, "/api/v1/history").expect("history")).expect("json");
    assert_eq!(history["source"], "database", "{history}");

    // The GPUs get busier: the charts follow (NVML is read at each reconcile).
    let load = |gpus: &mut [StubGpu; 3], percents: [u32; 2]| {
        for (g, p) in gpus.iter_mut().zip(percents) {
            g.utilization_percent = p;
        }
        stub.write(StubInit::Ok, gpus);
    };
    load(&mut gpus, [85, 55]);

    // The hostile name is text: shown whole, its bidi override made visible, nothing run.
    until(
        &browser,
        &watch,
        Duration::from_secs(20),
        "the hostile registration",
        "return !!document.getElementById('orphans');",
    );
    let shown = browser.script("return document.getElementById('orphans').textContent;");
    let expected = format!(
        "{}-{}U+202Egnp.exe",
        w.run,
        HOSTILE.trim_end_matches("\u{202e}gnp.exe")
    );
    assert_eq!(shown.as_str(), Some(expected.as_str()));
    assert_eq!(
        browser.script("return [window.pwned === undefined, document.querySelectorAll('img').length, document.scripts.length];"),
        serde_json::json!([true, 0, 1])
    );

    // An autoscaled pool at its max: the second job waits (and says why), then runs once the
    // first is done.
    w.fake
        .queue_jobs_for_scale_set(scale_set, 2)
        .expect("queue");
    until(
        &browser,
        &watch,
        Duration::from_secs(60),
        "a job waiting at max",
        "const r = document.querySelector('tr[data-pool=\"auto\"] td.waiting');
         return !!r && r.textContent.includes('1 (at max)');",
    );
    let runner_of = |w: &World| -> Option<String> {
        let prefix = format!("{}-auto-", w.run);
        w.owned_containers()
            .into_iter()
            .find(|(n, s)| n.starts_with(&prefix) && s == "running")
            .map(|(n, _)| n)
    };
    let mut first = None;
    watch.eventually(
        Duration::from_secs(60),
        "a runner of the autoscaled pool",
        || {
            first = runner_of(&w);
            first.is_some()
        },
    );
    let first = first.expect("runner");
    let mut job = None;
    watch.eventually(Duration::from_secs(30), "its job", || {
        job = w.fake.start_job(scale_set, &first).ok();
        job.is_some()
    });
    let job = job.expect("job");
    until(
        &browser,
        &watch,
        Duration::from_secs(30),
        "the first job running with its name",
        &running_check(&first, &format!("job {}", job.job_id)),
    );
    w.fake
        .complete_job(scale_set, &first, "succeeded")
        .expect("complete");
    common::docker_ok(&["stop", "-t", "0", &first]);
    until(
        &browser,
        &watch,
        Duration::from_secs(60),
        "the waiting job running on a new runner",
        &format!(
            "const w = document.querySelector('tr[data-pool=\"auto\"] td.waiting');
             const rows = Array.from(document.querySelectorAll('tr[data-runner]'))
               .filter((r) => r.children[2].textContent === 'auto' && r.dataset.runner !== {f}
                 && !r.children[3].textContent.includes('exited'));
             return !!w && w.textContent === '0' && rows.length === 1;",
            f = js(&first)
        ),
    );
    let mut second = None;
    watch.eventually(Duration::from_secs(30), "the second runner", || {
        second = runner_of(&w).filter(|n| n != &first);
        second.is_some()
    });
    let second = second.expect("runner");
    let mut job = None;
    watch.eventually(Duration::from_secs(30), "the second job", || {
        job = w.fake.start_job(scale_set, &second).ok();
        job.is_some()
    });
    let job = job.expect("job");
    until(
        &browser,
        &watch,
        Duration::from_secs(30),
        "the second job running with its name",
        &running_check(&second, &format!("job {}", job.job_id)),
    );

    load(&mut gpus, [40, 95]);

    // A GPU runner replaced under watch: the page follows without a reload.
    let victim = names[0].clone();
    let held = w.ledger(&victim);
    for g in gpus.iter_mut().filter(|g| held.contains(&g.uuid)) {
        g.processes = 0;
        g.memory_used_bytes = 0;
    }
    stub.write(StubInit::Ok, &gpus);
    w.finish_job(&victim);
    until(
        &browser,
        &watch,
        Duration::from_secs(60),
        "the replacement",
        &format!(
            "const gpu = Array.from(document.querySelectorAll('tr[data-runner]'))
               .filter((r) => r.children[2].textContent === 'gpu' && r.children[3].textContent.includes('exited') === false);
             return !document.querySelector('tr[data-runner=' + CSS.escape({v}) + ']') && gpu.length === 2
               && window.__sameDocument === true;",
            v = js(&victim)
        ),
    );
    until(
        &browser,
        &watch,
        Duration::from_secs(20),
        "the replacement's events",
        &format!(
            "return document.querySelector('#events').textContent.includes('runner removed' + {v});",
            v = js(&victim)
        ),
    );

    // Nothing but the listener was asked for, and the browser logged no error.
    let requests = browser.script(
        "return performance.getEntriesByType('resource').map((e) => e.name).concat([location.href]);",
    );
    for url in requests.as_array().expect("urls") {
        let url = url.as_str().unwrap_or_default();
        assert!(
            url.starts_with(&format!("{base}/")),
            "a request outside the listener: {url}"
        );
    }
    let errors: Vec<Value> = browser
        .log()
        .into_iter()
        .filter(|e| e["level"] != "INFO" && e["level"] != "DEBUG")
        .collect();
    assert!(errors.is_empty(), "the browser logged: {errors:?}");

    // The GPU runners' registrations come online, one takes a job: the page says so.
    let gpu_runners: Vec<String> = w.container_names("gpu");
    for (i, name) in gpu_runners.iter().enumerate() {
        if let Some(id) = w.runner_id(name) {
            w.fake.set_runner_state(&w.scope, id, true, i == 0);
        }
    }
    until(
        &browser,
        &watch,
        Duration::from_secs(30),
        "a busy GPU runner",
        "return Array.from(document.querySelectorAll('tr[data-runner]')).some((r) => r.children[2].textContent === 'gpu' && r.children[3].textContent === 'busy');",
    );

    // A critical Xid on a GPU: its card says unhealthy and why, then quarantined once watch
    // has recorded the quarantine; its host counts it.
    stub.write_with(
        StubInit::Ok,
        &gpus,
        &format!("event 1 {} xid 79\n", gpus[0].uuid),
    );
    until(
        &browser,
        &watch,
        Duration::from_secs(60),
        "an unhealthy, quarantined GPU",
        &format!(
            "const h = document.querySelector('[data-gpu=' + CSS.escape({u}) + '] p.health');
             return !!h && h.querySelector('.state').textContent === 'unhealthy'
               && !!h.querySelector('.quarantined') && h.textContent.includes('Xid 79')
               && document.querySelector('tr[data-host=\"local\"] td.unwell').textContent === '1 unhealthy, 1 dirty, 1 quarantined';",
            u = js(&gpus[0].uuid)
        ),
    );
    let other = browser.script(&format!(
        "return document.querySelector('[data-gpu=' + CSS.escape({u}) + '] p.health').textContent;",
        u = js(&gpus[1].uuid)
    ));
    assert_eq!(other.as_str(), Some("health healthy"));

    // A GPU no runner holds with a process on it: dirty, and its host counts it.
    let dirty = browser.script(&format!(
        "const h = document.querySelector('[data-gpu=' + CSS.escape({u}) + ']');
         return !!h && h.querySelector('p.health .state').textContent === 'dirty'
           && h.textContent.includes('held by free');",
        u = js(&gpus[2].uuid)
    ));
    assert_eq!(dirty, Value::Bool(true), "the dirty GPU's card");

    // A screenshot of the page as the test left it; FLEET_SCREENSHOT=docs keeps it for the README.
    let height = browser.script(
        "return Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom);",
    );
    browser.set_window(1400, height.as_u64().unwrap_or(2400) as u32 + 100);
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).expect("save the screenshot");
    eprintln!("screenshot: {}", out.display());
    if std::env::var("FLEET_SCREENSHOT").as_deref() == Ok("docs") {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png");
        std::fs::write(docs, &png).expect("save the screenshot in docs/");
        // Kept small for the README: pngquant, where installed, makes it a palette image.
        let _ = Command::new("pngquant")
            .args([
                "--quality=70-95",
                "--speed=1",
                "--force",
                "--output",
                docs,
                docs,
            ])
            .status();
    }

    // Without colour the page reads the same: every state mark carries its word.
    let worded = browser.script(
        "const marks = Array.from(document.querySelectorAll('.state'));
         return marks.length > 0 && marks.every((m) => /^[a-z]/.test(m.textContent.trim()));",
    );
    assert_eq!(worded, Value::Bool(true), "a state shown by colour alone");

    // A narrow screen: the tables scroll inside their section, the page itself does not.
    browser.set_window(400, 900);
    let wide =
        browser.script("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(
        wide,
        Value::Bool(true),
        "the page is wider than a narrow window"
    );
}

#[test]
fn a_listener_beyond_loopback_without_auth_refuses_to_start_and_with_auth_answers_401() {
    let w = World::new();
    w.spec(&pool("eph", 0, true));
    let port = free_port();
    let out = w.fleet(&["watch", "--listen", &format!("0.0.0.0:{port}")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&format!(
            "refusing to serve on 0.0.0.0:{port} without authentication"
        )),
        "{}",
        stderr(&out)
    );
    // A world-readable auth file is refused too.
    let auth = w.dir.path().join("listen-auth");
    std::fs::write(&auth, "0123456789abcdef0123456789abcdef\n").expect("write");
    let chmod = |mode: &str| {
        let ok = Command::new("chmod")
            .args([mode, &auth.display().to_string()])
            .status();
        assert!(ok.is_ok_and(|s| s.success()));
    };
    chmod("644");
    let auth_arg = auth.display().to_string();
    let out = w.fleet(&[
        "watch",
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--listen-auth",
        &auth_arg,
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("can be read by every user"),
        "{}",
        stderr(&out)
    );

    // With auth (on loopback: tests bind nothing else), no credentials get 401.
    chmod("600");
    let watch = WatchProcess::start(&w, &["--listen-auth", &auth_arg], &[]);
    watch.eventually(Duration::from_secs(30), "the listener", || {
        http_get(watch.metrics_port, "/healthz").as_deref() == Some("ok\n")
    });
    let answer = raw_get(watch.metrics_port, "/api/v1/status", None);
    assert_eq!(answer.split(' ').nth(1), Some("401"), "{answer}");
    let answer = raw_get(
        watch.metrics_port,
        "/",
        Some("Bearer 0123456789abcdef0123456789abcdef"),
    );
    assert_eq!(answer.split(' ').nth(1), Some("200"), "{answer}");
}

fn raw_get(port: u16, path: &str, auth: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

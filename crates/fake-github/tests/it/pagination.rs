//! Pagination: `per_page`, `page` and GitHub's `Link` header.

use std::collections::BTreeMap;

use http::Method;

use fake_github::{Config, NewRunner, Scope};

use crate::common::{Gh, check_schema, link, links};

#[tokio::test]
async fn pages_of_250_runners_cover_each_once() {
    let gh = Gh::start(Config::default()).await;
    let scope = Scope::org("acme");
    let mut ids = Vec::new();
    for i in 0..250 {
        ids.push(gh.fake.add_runner(
            &scope,
            NewRunner {
                name: format!("runner-{i:03}"),
                labels: vec!["self-hosted".into(), "gpu".into()],
                ..NewRunner::default()
            },
        ));
    }
    // A runner elsewhere must not leak into this scope's pages.
    gh.fake.add_runner(
        &Scope::repo("acme", "app"),
        NewRunner {
            name: "elsewhere".into(),
            ..NewRunner::default()
        },
    );

    let first = gh.url("/orgs/acme/actions/runners?per_page=100");
    let mut url = Some(first.clone());
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut pages = 0;
    while let Some(next) = url.take() {
        pages += 1;
        let r = gh.http.send(Method::GET, &next, Some(&gh.auth), None).await;
        assert_eq!(r.status, 200);
        check_schema(&r, "/orgs/{org}/actions/runners", "get");
        assert_eq!(r.body["total_count"], 250);
        let runners = r.body["runners"].as_array().expect("runners");
        for runner in runners {
            *seen.entry(runner["id"].as_u64().expect("id")).or_default() += 1;
        }
        let l = links(&r);
        let page_url =
            |n: usize| gh.url(&format!("/orgs/acme/actions/runners?per_page=100&page={n}"));
        match pages {
            1 => {
                assert_eq!(runners.len(), 100);
                assert_eq!(link(&l, "next"), Some(page_url(2).as_str()));
                assert_eq!(link(&l, "last"), Some(page_url(3).as_str()));
                assert_eq!(link(&l, "prev"), None);
                assert_eq!(link(&l, "first"), None);
            }
            2 => {
                assert_eq!(runners.len(), 100);
                assert_eq!(link(&l, "prev"), Some(page_url(1).as_str()));
                assert_eq!(link(&l, "next"), Some(page_url(3).as_str()));
                assert_eq!(link(&l, "last"), Some(page_url(3).as_str()));
                assert_eq!(link(&l, "first"), Some(page_url(1).as_str()));
            }
            3 => {
                assert_eq!(runners.len(), 50);
                assert_eq!(link(&l, "prev"), Some(page_url(2).as_str()));
                assert_eq!(link(&l, "first"), Some(page_url(1).as_str()));
                assert_eq!(link(&l, "next"), None);
                assert_eq!(link(&l, "last"), None);
            }
            _ => panic!("more than 3 pages"),
        }
        url = link(&l, "next").map(str::to_owned);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert!(seen.values().all(|&n| n == 1), "a runner was listed twice");
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn defaults_limits_and_name_filter() {
    let gh = Gh::start(Config::default()).await;
    let scope = Scope::repo("octo", "hello");
    for i in 0..45 {
        gh.fake.add_runner(
            &scope,
            NewRunner {
                name: format!("r{i}"),
                ..NewRunner::default()
            },
        );
    }
    let base = "/repos/octo/hello/actions/runners";
    // Default 30 per page.
    let r = gh.get(base).await;
    assert_eq!(r.body["runners"].as_array().map(Vec::len), Some(30));
    let l = links(&r);
    assert_eq!(
        link(&l, "next"),
        Some(gh.url(&format!("{base}?page=2")).as_str())
    );
    // At most 100 per page.
    let r = gh.get(&format!("{base}?per_page=500")).await;
    assert_eq!(r.body["runners"].as_array().map(Vec::len), Some(45));
    assert!(r.header("link").is_none());
    // Past the end: empty, still the total.
    let r = gh.get(&format!("{base}?per_page=20&page=9")).await;
    assert_eq!(r.body["runners"].as_array().map(Vec::len), Some(0));
    assert_eq!(r.body["total_count"], 45);
    // Exact name filter, other parameters kept in links.
    let r = gh.get(&format!("{base}?name=r7")).await;
    assert_eq!(r.body["total_count"], 1);
    assert_eq!(r.body["runners"][0]["name"], "r7");
    let r = gh.get(&format!("{base}?name=r")).await;
    assert_eq!(r.body["total_count"], 0);
}

#[tokio::test]
async fn runner_groups_paginate_too() {
    let gh = Gh::start(Config::default()).await;
    for i in 0..4 {
        gh.fake.add_runner_group("acme", &format!("group-{i}"));
    }
    let r = gh.get("/orgs/acme/actions/runner-groups?per_page=2").await;
    check_schema(&r, "/orgs/{org}/actions/runner-groups", "get");
    assert_eq!(r.body["total_count"], 5);
    assert_eq!(r.body["runner_groups"][0]["name"], "Default");
    let l = links(&r);
    assert_eq!(
        link(&l, "last"),
        Some(
            gh.url("/orgs/acme/actions/runner-groups?per_page=2&page=3")
                .as_str()
        )
    );
    // Another organization has only its Default group.
    let r = gh.get("/orgs/other/actions/runner-groups").await;
    assert_eq!(r.body["total_count"], 1);
}

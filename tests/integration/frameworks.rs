//! Real web frameworks behind certguard: what they make of what certguard forwards.
//!
//! Rack (`ruby-rack`, the stack under every Rails app) with `Rack::MethodOverride`, and PHP
//! (its own form parsers) with Symfony's `Request` and Laravel's additions (tests/php), run a
//! POST as the method its form body's `_method` field, its JSON body's `_method` key (Laravel)
//! or its `X-HTTP-Method-Override` header names. Each request below goes to the framework
//! directly (what an attacker gets without certguard) and through certguard: whenever the
//! framework runs another method than POST, certguard must have refused it; ordinary forms
//! pass and the framework runs them as POST.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{client, tool, Conn, Env};

/// A framework's server on a local port, killed on drop.
struct Framework {
    child: Child,
    port: u16,
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `program` with `args` (`{port}` replaced by a free port) and wait until it listens.
async fn start(program: String, args: &[&str]) -> Framework {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let framework = Framework { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{args:?} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    framework
}

const RACK_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rack/method_override.rb");
const PHP_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php/method_override.php");
const SYMFONY: &str = "/usr/share/php/Symfony/Component/HttpFoundation/autoload.php";

#[tokio::test]
async fn rack_never_runs_a_method_policy_did_not_judge() {
    let Some(ruby) = tool("RUBY", "ruby", &["-rrack", "-rwebrick", "-e", "exit 0"]) else {
        return;
    };
    let rack = start(ruby, &[RACK_APP, "{port}"]).await;
    differential(&rack).await;
}

#[tokio::test]
async fn php_and_laravel_never_run_a_method_policy_did_not_judge() {
    let probe = format!("require '{SYMFONY}';");
    let Some(php) = tool("PHP", "php", &["-r", &probe]) else {
        return;
    };
    let server = start(php, &["-S", "127.0.0.1:{port}", PHP_APP]).await;
    differential(&server).await;
}

/// POST `body` to the framework directly; the method it ran it as.
async fn direct(port: u16, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut head = format!(
        "POST /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the framework answers")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn multipart(boundary: &str, eol: &str, parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (name, value) in parts {
        body.push_str(&format!(
            "--{boundary}{eol}Content-Disposition: form-data; {name}{eol}{eol}{value}{eol}"
        ));
    }
    body.push_str(&format!("--{boundary}--{eol}"));
    body
}

/// The corpus, to `framework` directly and through certguard (as bob, who may only POST).
async fn differential(framework: &Framework) {
    let env = Env::new().await;
    // bob may only POST (and GET) here; alice may DELETE.
    let routes = "  - name: forms\n    path_prefix: /\n    methods: [GET, POST]\n    upstream: app\n    allow:\n      - authenticated: true";
    let yaml = env.yaml(routes, "").replace(
        &format!("url: http://{}", env.upstream.addr),
        &format!("url: http://127.0.0.1:{}", framework.port),
    );
    let proxy = env.start(&yaml).await;

    const FORM: &str = "application/x-www-form-urlencoded";
    let long_boundary = format!("multipart/form-data; boundary={}", "b".repeat(300));
    // One part with these raw headers and the value DELETE.
    let raw_part = |headers: &str| format!("--BB\r\n{headers}\r\n\r\nDELETE\r\n--BB--\r\n");
    let mp = "multipart/form-data; boundary=BB";
    let file = (
        "name=\"upload\"; filename=\"a.txt\"",
        "line\r\n--B\r\n_method=DELETE",
    );
    let method = |v: &'static str| ("name=\"_method\"", v);
    let cases: Vec<(Vec<(&str, &str)>, String)> = vec![
        // urlencoded, and what Rack takes for it
        (vec![("Content-Type", FORM)], "_method=DELETE".into()),
        (vec![], "_method=put".into()),
        (vec![("Content-Type", "")], "a=1&_method=patch".into()),
        (
            vec![(
                "Content-Type",
                "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            )],
            "_method=DELETE".into(),
        ),
        (
            vec![(
                "Content-Type",
                "application/x-www-form-urlencoded, text/plain",
            )],
            "_method=DELETE".into(),
        ),
        (vec![("Content-Type", FORM)], "%5Fmethod=DELETE".into()),
        (vec![("Content-Type", FORM)], "a=1&  _method=DELETE".into()),
        (vec![("Content-Type", FORM)], "_method=%44elete".into()),
        (vec![("Content-Type", FORM)], "_method=DELETE\0".into()),
        (
            vec![("Content-Type", FORM)],
            "_method=POST&_method=DELETE".into(),
        ),
        (
            vec![("Content-Type", FORM)],
            "_method=DELETE&_method=POST".into(),
        ),
        (vec![("Content-Type", FORM)], "a=1;_method=DELETE".into()),
        (vec![("Content-Type", FORM)], "_method[]=DELETE".into()),
        (vec![("Content-Type", FORM)], "_METHOD=DELETE".into()),
        (
            vec![("Content-Type", FORM)],
            format!("pad={}&_method=DELETE", "x".repeat(100_000)),
        ),
        // multipart, parsed by Rack for form-data, mixed and related, or as urlencoded without
        // a boundary
        (
            vec![("Content-Type", mp)],
            multipart("BB", "\r\n", &[file, method("DELETE")]),
        ),
        (
            vec![("Content-Type", "multipart/form-data; boundary=\"BB\"")],
            multipart("BB", "\r\n", &[method("put")]),
        ),
        (
            vec![("Content-Type", "multipart/mixed; boundary=BB")],
            multipart("BB", "\r\n", &[method("DELETE")]),
        ),
        (
            vec![("Content-Type", "multipart/related; boundary=BB")],
            multipart("BB", "\r\n", &[method("PATCH")]),
        ),
        (
            vec![("Content-Type", mp)],
            format!(
                "preamble\r\n{}",
                multipart("BB", "\r\n", &[method("DELETE")])
            ),
        ),
        (
            vec![("Content-Type", mp)],
            // (not parsed by Rack 2.2 nor PHP: refused all the same)
            format!("xx{}", multipart("BB", "\r\n", &[method("DELETE")])),
        ),
        (
            vec![("Content-Type", mp)],
            multipart("BB", "\n", &[method("DELETE")]),
        ),
        (
            vec![("Content-Type", mp)],
            multipart("BB", "\r\n", &[("name=_method", "DELETE")]),
        ),
        (
            vec![("Content-Type", mp)],
            multipart(
                "BB",
                "\r\n",
                &[("name=\"_method\"; filename=\"m\"", "DELETE")],
            ),
        ),
        (
            vec![("Content-Type", "multipart/form-data")],
            "_method=DELETE".into(),
        ),
        // JSON (Laravel)
        (
            vec![("Content-Type", "application/json")],
            r#"{"a":1,"_method":"DELETE"}"#.into(),
        ),
        (
            vec![("Content-Type", "application/vnd.api+json")],
            r#"{"_method":"put"}"#.into(),
        ),
        (
            vec![("Content-Type", "text/plain; x=/json")],
            r#"{"\u005fmethod":"\u0044ELETE"}"#.into(),
        ),
        (
            vec![("Content-Type", "application/json")],
            r#"{"_method":"POST","_method":"PATCH"}"#.into(),
        ),
        (
            vec![("Content-Type", "application/json")],
            r#"{"n":{"_method":"DELETE"},"_method":["DELETE"]}"#.into(),
        ),
        // PHP's name mangling
        (vec![("Content-Type", FORM)], ".method=DELETE".into()),
        (vec![("Content-Type", FORM)], "+_method=DELETE".into()),
        (vec![("Content-Type", FORM)], "_method%00x=DELETE".into()),
        // multipart part names, as Rack (unanchored, across lines, Content-ID, backslashes,
        // brackets) and PHP (folded lines, single quotes, bare values) read them
        (vec![("Content-Type", mp)], raw_part("Content-ID: _method")),
        (vec![("Content-Type", mp)], raw_part("X-Content-Disposition: form-data; name=\"_method\"")),
        (vec![("Content-Type", mp)], raw_part("X-Note: Content-Disposition:; name=_method")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data\r\n; name=\"_method\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"\\_method\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"[_method]\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method]")),
        (vec![("Content-Type", mp)], raw_part("X-A: 1\n\nContent-Disposition: form-data; name=\"_method\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name='_method'")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name= _method x")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"_met\r\nhod\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data;\r\n\tname=\"_method\"")),
        // (second review) names running into the next header, repeated `=`, Content-ID
        // inside a header name, an empty first header line, parts after the closing
        // delimiter, long delimiter lines, delimiters inside header blocks, NUL lines, long
        // lines, bodies cut inside the value
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"_method\"\r\nContent-Type: text/plain")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"_method\"x")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method\rContent-Type: x")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\"_met\r\nhod\"\r\nContent-Type: text/plain")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name==_method")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name===.method")),
        (vec![("Content-Type", mp)], raw_part("X-FileContent-ID: _method")),
        (vec![("Content-Type", mp)], raw_part("\r\nContent-Disposition: form-data; name=\"_method\"")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method; x=--BB")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; x=--BB; name=_method")),
        (
            vec![("Content-Type", mp)],
            "--BB--\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--BB--\r\n".into(),
        ),
        (
            vec![("Content-Type", mp)],
            format!("--BB{}\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--BB--\r\n", " ".repeat(1100)),
        ),
        (
            vec![("Content-Type", mp)],
            "--BB\r\nContent-Disposition: form-data; name=\"_method\"\r\n\0\r\nDELETE\r\n--BB--\r\n".into(),
        ),
        (
            vec![("Content-Type", mp)],
            "--BB\r\nContent-Disposition: form-data; name=\"_method\"\r\n\0\r\nDELETE".into(),
        ),
        (
            vec![("Content-Type", mp)],
            format!("--BB\r\nContent-Disposition: form-data; name=\"_method\"\r\nX: {}\r\n\r\nDELETE\r\n--BB--\r\n", "y".repeat(5116)),
        ),
        (vec![("Content-Type", "multipart/form-data; boundary=BB\"x")], multipart("BB", "\r\n", &[method("DELETE")])),
        (
            vec![("Content-Type", "multipart/form-data"), ("Content-Type", "text/plain; boundary=BB")],
            multipart("BB", "\r\n", &[method("DELETE")]),
        ),
        (vec![("Content-Type", FORM)], format!("{}_method=DELETE", "[".repeat(1100))),
        (vec![("Content-Type", FORM)], format!("{}_method=DELETE", "+".repeat(1100))),
        // (third review) a blank line straddling a delimiter line, `--BB` then NUL on a long
        // line, a header block cut by the end of the body, vertical tabs, Rack's stop
        // characters, many brackets, boundaries only PHP's rule finds
        (
            vec![("Content-Type", mp)],
            "--BBx\r\n--BB\r\n\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--BB--\r\n".into(),
        ),
        (
            vec![("Content-Type", mp)],
            format!("--BB\0{}Content-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--BB--\r\n", "A".repeat(5115)),
        ),
        (vec![("Content-Type", mp)], "--BB\r\nContent-Disposition: form-data; name=_method\r\nDELETE".into()),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method\x0b")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=\x0b_method")),
        (vec![("Content-Type", mp)], raw_part("Content-ID:\x0b_method")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method:x")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method/x")),
        (vec![("Content-Type", mp)], raw_part("Content-Disposition: form-data; name=_method\\x")),
        (vec![("Content-Type", mp)], raw_part(&format!("Content-Disposition: form-data; name=\"{}_method\"", "[".repeat(64)))),
        (vec![("Content-Type", "multipart/form-data; boundary-x=BB")], "_method=DELETE".into()),
        (vec![("Content-Type", "multipart/form-data; boundary*=BB")], "_method=DELETE".into()),
        (vec![("Content-Type", "multipart/mixed; boundary.x=BB")], "_method=DELETE".into()),
        // a delimiter in the middle of a line (Rack ends the part there)
        (
            vec![("Content-Type", mp)],
            "--BB\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\njunk--BB\r\n --BB\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--BB--\r\n".into(),
        ),
        // boundaries as PHP and Rack take them
        (vec![("Content-Type", "multipart/form-data; boundary =BB")], multipart("BB", "\r\n", &[method("DELETE")])),
        (vec![("Content-Type", "multipart/form-data; boundaryx=BB")], multipart("BB", "\r\n", &[method("DELETE")])),
        (vec![("Content-Type", "multipart/form-data; Boundary=AA; boundary=BB")], multipart("BB", "\r\n", &[method("DELETE")])),
        (vec![("Content-Type", "multipart/form-data; boundary=AA; Boundary=BB")], multipart("BB", "\r\n", &[method("DELETE")])),
        (
            vec![("Content-Type", long_boundary.as_str())],
            multipart(&"b".repeat(300), "\r\n", &[method("DELETE")]),
        ),
        (vec![("Content-Type", "application/x-www-form-urlencoded junk")], "_method=DELETE".into()),
        // keys with brackets (Rack's and qs's normalization)
        (vec![("Content-Type", FORM)], "[_method]=DELETE".into()),
        (vec![("Content-Type", FORM)], "]_method=DELETE".into()),
        (vec![("Content-Type", FORM)], "_method]=DELETE".into()),
        (vec![("Content-Type", FORM)], "[]_method=DELETE".into()),
        (vec![("Content-Type", FORM)], "%5B_method%5D=DELETE".into()),
        // the header, judged before the body
        (
            vec![("Content-Type", FORM), ("X-HTTP-Method-Override", "DELETE")],
            "a=1".into(),
        ),
        // what Rack runs as POST
        (vec![("Content-Type", FORM)], "a=1&_method=POST".into()),
        (vec![], "_method=post&b=2".into()),
        (
            vec![("Content-Type", mp)],
            multipart("BB", "\r\n", &[file, method("post")]),
        ),
        (
            vec![("Content-Type", "text/plain")],
            "_method=DELETE".into(),
        ),
        (
            vec![("Content-Type", "application/json")],
            r#"{"_method":"DELETE"}"#.into(),
        ),
        (
            vec![("Content-Type", FORM)],
            "method=DELETE&x_method=PUT".into(),
        ),
    ];
    let (mut overridden, mut plain) = (0, 0);
    for h2 in [false, true] {
        for (headers, body) in &cases {
            let shown: String = body.chars().take(100).collect();
            let ran = direct(framework.port, headers, body.as_bytes()).await;
            let mut bob = Conn::open(
                proxy.listen_addr,
                env.client(&env.pki.bob, &[if h2 { b"h2" } else { b"http/1.1" }]),
                "localhost",
            )
            .await
            .unwrap();
            let mut req = if h2 {
                Request::post("https://localhost/x")
            } else {
                Request::post("/x").header("host", "localhost")
            };
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .header("content-length", body.len())
                .body(client::body(Bytes::from(body.clone())))
                .unwrap();
            let (status, text) = match bob.send(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    (status, String::from_utf8_lossy(&text).into_owned())
                }
                Err(e) => panic!("{headers:?} {shown:?} (h2: {h2}): {e:?}"),
            };
            let what = format!("{headers:?} {shown:?} (h2: {h2}): the framework ran {ran}, certguard said {status} {text:?}");
            if ran != "POST" && ran != "ERROR" {
                overridden += 1;
                assert_eq!(status, 400, "{what}");
            } else if status != 400 && ran == "POST" {
                plain += 1;
                assert_eq!((status, text.as_str()), (200, "POST"), "{what}");
            }
        }
    }
    // The corpus exercises both sides.
    assert!(
        overridden >= 80 && plain >= 10,
        "{overridden} overridden, {plain} plain"
    );
}

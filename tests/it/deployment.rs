//! The deployment files, checked without a Docker engine (none runs on CI machines): the compose
//! file's services, volumes, mounts, ports and referenced files; the provisioned dashboards'
//! datasources; and that the Dockerfile's build stage builds the workspace CI builds.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses");
    doc.apply_merge().expect("merge keys resolve");
    // Nested merges (`environment: {<<: *tributary-env}`) need a second pass per service.
    for (_, service) in doc["services"].as_mapping_mut().unwrap().iter_mut() {
        service.apply_merge().unwrap();
        if let Some(env) = service.get_mut("environment") {
            env.apply_merge().unwrap();
        }
    }
    doc
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().map(|x| x.as_str().expect("a string").to_string()).collect()).unwrap_or_default()
}

/// `${NAME}`, `${NAME:-default}` and `${NAME:?message}` references in a text.
fn variables(text: &str) -> BTreeSet<(String, bool)> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').expect("closed reference") + i;
        let inner = &rest[i + 2..end];
        let name: String = inner.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let has_default = inner[name.len()..].starts_with(":-");
        out.insert((name, has_default));
        rest = &rest[end..];
    }
    out
}

/// `text` with every `${NAME:-default}` replaced by its default (what compose does when NAME is
/// unset): the engine's own interpolation, with no variable set.
fn with_defaults(text: &str) -> String {
    tributary::config::interpolate::interpolate(text, &|_| None, &mut Vec::new()).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

#[test]
fn the_compose_file_wires_every_service_to_files_volumes_and_ports_that_exist() {
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for wanted in [
        "timescaledb",
        "victoriametrics",
        "grafana",
        "redis",
        "kafka",
        "webex-simulator",
        "tributary-webex",
        "tributary-badges",
        "tributary-srt",
        "tributary-probes",
        "tributary-probe-producer",
        "tributary-probe-consumer",
        "serve",
    ] {
        assert!(names.contains(wanted), "service `{wanted}` missing: {names:?}");
    }
    let declared: BTreeSet<&str> = doc["volumes"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
    // Directories the image creates for its non-root user (`install -d -o tributary … DIR …`).
    let dockerfile = read("Dockerfile");
    let owned: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.split_once("install -d -o tributary -g tributary "))
        .flat_map(|(_, dirs)| dirs.split_whitespace().take_while(|d| d.starts_with('/')))
        .collect();
    let mut used = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        assert!(s["image"].is_string() || s["build"].is_string(), "{name}: no image or build");
        if s["build"] == "." {
            assert!(Path::new(ROOT).join("Dockerfile").exists());
        }
        for mount in strings(&s["volumes"]) {
            let source = mount.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(Path::new(ROOT).join(source).exists(), "{name}: bind mount {source} does not exist");
            } else {
                assert!(declared.contains(source), "{name}: volume `{source}` is not declared under volumes:");
                used.insert(source.to_string());
                let target = mount.split(':').nth(1).unwrap();
                if s["build"] == "." {
                    assert!(
                        owned.contains(&target),
                        "{name}: volume `{source}` on {target}, which the image does not create for the tributary user ({owned:?})"
                    );
                }
            }
        }
        for port in strings(&s["ports"]) {
            let port = with_defaults(&port);
            let (mapping, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
            // Published on loopback unless the user says otherwise: Redis and Kafka have no auth.
            let mapping = mapping.strip_prefix("127.0.0.1:").unwrap_or_else(|| {
                panic!("{name}: port `{port}` is published on every interface; prefix it with ${{BIND_ADDRESS:-127.0.0.1}}:")
            });
            let (host, container) = mapping.split_once(':').unwrap_or_else(|| panic!("{name}: port `{port}` is not HOST:CONTAINER"));
            let (host, container): (u16, u16) = (host.parse().unwrap(), container.parse().unwrap());
            assert!(container > 0 && ["tcp", "udp"].contains(&proto), "{name}: {port}");
            assert!(host_ports.insert((host, proto.to_string())), "{name}: host port {port} is published twice");
        }
        // Pipelines run from the image's copy of pipelines/.
        for arg in strings(&s["command"]) {
            if let Some(file) = arg.strip_prefix("/etc/tributary/pipelines/") {
                assert!(Path::new(ROOT).join("pipelines").join(file).exists(), "{name}: pipeline {file} does not exist");
            }
        }
        if let Some(deps) = s["depends_on"].as_mapping() {
            for dep in deps.keys() {
                assert!(names.contains(dep.as_str().unwrap()), "{name}: depends on unknown `{dep:?}`");
            }
        }
        for dep in strings(&s["depends_on"]) {
            assert!(names.contains(dep.as_str()), "{name}: depends on unknown `{dep}`");
        }
    }
    assert_eq!(used.iter().map(String::as_str).collect::<BTreeSet<_>>(), declared, "declared volumes that nothing mounts");
    assert_eq!(strings(&services[&Value::from("webex-simulator")]["profiles"]), ["simulator"], "the simulator is optional");

    // Grafana gets the provisioning folders and the dashboards where the provider looks.
    let grafana = strings(&services[&Value::from("grafana")]["volumes"]);
    let provider: Value = serde_yaml::from_str(&read("dashboards/provisioning/dashboards/dashboards.yaml")).unwrap();
    let dashboards_path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(grafana.iter().any(|m| m.starts_with(&format!("./dashboards:{dashboards_path}"))), "{grafana:?}");
    assert!(grafana.iter().any(|m| m.starts_with("./dashboards/provisioning/datasources:/etc/grafana/provisioning/datasources")));
    // The datasource file's variables are set on the Grafana service, without defaults: Grafana's
    // provisioning expands `${NAME}` only (Go's os.ExpandEnv), so `${NAME:-x}` would become "".
    let env = &services[&Value::from("grafana")]["environment"];
    let datasources = read("dashboards/provisioning/datasources/datasources.yaml");
    let values: String = datasources.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    for (var, has_default) in variables(&values) {
        assert!(!has_default, "datasources.yaml: Grafana does not expand `${{{var}:-…}}`");
        assert!(!env[var.as_str()].is_null(), "grafana: datasources.yaml needs {var}");
    }

    // Secrets come from .env: every required variable is in .env.example, nothing is inlined.
    let example = read(".env.example");
    let text = read("docker-compose.yml");
    for (var, has_default) in variables(&text) {
        if !has_default {
            assert!(example.lines().any(|l| l.starts_with(&format!("{var}="))), ".env.example lacks {var}");
        }
    }
    assert!(!text.contains("password=change-me") && !text.to_lowercase().contains("password: change"), "a password is inlined");
    assert!(read(".gitignore").lines().any(|l| l == ".env"), ".env must stay out of git");
}

#[test]
fn every_provisioned_dashboard_parses_and_uses_a_provisioned_datasource() {
    let sources: Value = serde_yaml::from_str(&read("dashboards/provisioning/datasources/datasources.yaml")).unwrap();
    let uids: BTreeSet<String> =
        sources["datasources"].as_sequence().unwrap().iter().map(|d| d["uid"].as_str().unwrap().to_string()).collect();
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut seen_uids = BTreeSet::new();
    for f in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(seen_uids.insert(d["uid"].as_str().unwrap().to_string()), "{}: duplicate dashboard uid", f.display());
        let mut refs = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            refs.push(&p["datasource"]);
            refs.extend(p["targets"].as_array().unwrap().iter().map(|t| &t["datasource"]));
        }
        refs.extend(d["templating"]["list"].as_array().unwrap().iter().map(|v| &v["datasource"]));
        for r in refs {
            let uid = r["uid"].as_str().unwrap_or_else(|| panic!("{}: a datasource without uid", f.display()));
            assert!(uids.contains(uid), "{}: datasource uid `{uid}` is not provisioned ({uids:?})", f.display());
        }
    }
}

#[test]
fn the_dockerfile_builds_the_workspace_ci_builds() {
    let dockerfile = read("Dockerfile");
    // Stages: the lines from one FROM to the next.
    let mut stages: Vec<Vec<&str>> = Vec::new();
    for line in dockerfile.lines() {
        if line.starts_with("FROM ") {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(line);
        }
    }
    assert_eq!(stages.len(), 2, "a build and a runtime stage");
    let build = &stages[0];
    assert!(build[0].starts_with("FROM rust:") && build[0].ends_with(" AS build"), "{}", build[0]);
    // Every workspace member's folder is copied, with the lock file, and the build is --locked.
    let copied: Vec<&str> = build.iter().filter_map(|l| l.strip_prefix("COPY ")).flat_map(|l| l.split_whitespace()).collect();
    let manifest: toml_like::Members = toml_like::members(&read("Cargo.toml"));
    for member in manifest.0 {
        let top = member.split('/').next().unwrap();
        let top = if top == "." { "src" } else { top };
        assert!(copied.contains(&top), "workspace member {member} is not copied into the build stage: {copied:?}");
    }
    for f in ["Cargo.toml", "Cargo.lock", "benches", "tests"] {
        assert!(copied.contains(&f), "{f} is not copied: {copied:?}");
    }
    assert!(build.iter().any(|l| l.contains("cargo build --release --locked --bin tributary")));
    // The build needs the toolchain image only (librdkafka, OpenSSL, zlib built from source): no
    // package installs, and the default features link no system library the runtime lacks.
    assert!(!build.iter().any(|l| l.contains("apt-get")), "the build stage installs packages again: {build:?}");
    assert!(!read("Cargo.toml").contains("cmake-build"), "rdkafka's cmake-build needs cmake and libcurl headers");
    // The runtime: non-root, srt-live-transmit, `tributary run`, a /health check.
    let runtime = stages[1].join("\n");
    assert!(runtime.contains("srt-tools"));
    assert!(runtime.contains("\nUSER tributary"));
    assert!(runtime.contains("ENTRYPOINT [\"tributary\", \"run\"]"));
    assert!(runtime.contains("HEALTHCHECK") && runtime.contains("/health"));
}

/// Just enough of Cargo.toml: the workspace members list.
mod toml_like {
    pub struct Members(pub Vec<String>);
    pub fn members(text: &str) -> Members {
        let line = text.lines().find(|l| l.starts_with("members = [")).expect("a members line");
        Members(line.split('"').skip(1).step_by(2).map(str::to_string).collect())
    }
}

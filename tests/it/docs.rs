//! The documentation a newcomer follows: every relative link resolves to a file inside this
//! repository, and every `cargo bench --bench NAME` names a bench that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, docs/*.md and every plugin's README.md.
fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for dir in [root.join("docs"), root.join("plugins")] {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "md") {
                files.push(p);
            } else if p.join("README.md").exists() {
                files.push(p.join("README.md"));
            }
        }
    }
    files
}

/// The targets of `[text](target)` links.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](").skip(1).filter_map(|rest| rest.split_once(')').map(|(t, _)| t.to_string())).collect()
}

#[test]
fn relative_links_stay_inside_the_repository_and_resolve() {
    let root = root().canonicalize().unwrap();
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() >= 15, "README, docs and plugin READMEs: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let resolved = file.parent().unwrap().join(path);
            match resolved.canonicalize() {
                Ok(p) if p.starts_with(&root) => {}
                Ok(p) => broken.push(format!("{}: {target} leaves the repository ({})", file.display(), p.display())),
                Err(e) => broken.push(format!("{}: {target}: {e}", file.display())),
            }
        }
        // Paths written as code that point outside the repository (a sibling checkout's docs).
        for outside in ["../shared/", "../../shared/", "../../../shared/"] {
            if text.contains(outside) {
                broken.push(format!("{}: mentions {outside}, which is not part of this repository", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn documented_benches_exist() {
    // Benches of the whole pipeline sit in the root manifest; a bench of one plugin beside it.
    let mut manifests = vec![root().join("Cargo.toml")];
    manifests.extend(std::fs::read_dir(root().join("plugins")).unwrap().map(|e| e.unwrap().path().join("Cargo.toml")));
    let mut benches: Vec<String> = Vec::new();
    for manifest in manifests.iter().filter(|m| m.exists()) {
        let text = std::fs::read_to_string(manifest).unwrap();
        benches.extend(
            text.split("[[bench]]")
                .skip(1)
                .filter_map(|b| b.lines().find_map(|l| l.trim().strip_prefix("name = \"")).map(|n| n.trim_end_matches('"').to_string())),
        );
    }
    assert!(benches.iter().any(|b| b == "metrics_sinks") && benches.iter().any(|b| b == "timescale_sink"), "{benches:?}");
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for named in text.split("--bench ").skip(1) {
            let name: String = named.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            assert!(benches.contains(&name), "{} documents `cargo bench --bench {name}`; benches: {benches:?}", file.display());
        }
    }
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let two = readme.split("## The two commands").nth(1).unwrap();
    let block = two.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    assert_eq!(block, "cargo run -- run pipelines/quickstart.yaml --duration 3m\n./scripts/test\n");
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "./scripts/test"), "{ci}");
    assert!(Path::new(&root().join("scripts/test")).exists());
}

/// The value a documented `${NAME}` stands for when the examples are checked: something of the
/// kind the name says (a libpq string, a URL), since `validate` reads it as such.
fn example_env(name: &str) -> Option<String> {
    let value = if name.contains("CONNECTION") || name.starts_with("PG") {
        "host=127.0.0.1 user=postgres dbname=test"
    } else if name.contains("URL") || name.contains("ENDPOINT") {
        "http://127.0.0.1:9"
    } else if name.contains("BROKERS") || name.contains("ADDR") {
        "127.0.0.1:9"
    } else {
        "example-value"
    };
    Some(value.to_string())
}

/// Every whole pipeline in the docs (a ```yaml block with `sources:` and `sinks:` at its top
/// level) passes `validate`: a reader copies them as they are.
#[tokio::test]
async fn every_documented_pipeline_validates() {
    let registry = tributary::plugins::Registry::builtin();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let yaml = block.split("```").next().unwrap();
            let top_level = |key: &str| yaml.lines().any(|l| l == key);
            if !(top_level("sources:") && top_level("sinks:")) {
                continue;
            }
            checked += 1;
            let name = format!("{} (yaml block {})", file.strip_prefix(root()).unwrap().display(), i + 1);
            let planned = match tributary::config::PipelineFile::parse(&name, yaml, &example_env) {
                Ok(parsed) => tributary::graph::plan(&parsed, &registry).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = planned {
                failures.push(format!("{name}:\n{e}"));
            }
        }
    }
    assert!(failures.is_empty(), "documented pipelines that `validate` refuses:\n\n{}", failures.join("\n\n"));
    // Eight today (the others are fragments: a source, or a sink, alone): the check cannot pass
    // by finding none.
    assert!(checked >= 8, "only {checked} documented pipelines found");
}

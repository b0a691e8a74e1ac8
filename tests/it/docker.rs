//! Issue 8: docker/ cannot run here (no image registry), so this checks what can
//! be checked: the compose file parses as YAML (PyYAML) with the expected
//! services wired together, its kgate config loads, and the Dockerfile builds
//! with the same system packages as `.ci/setup` and copies what exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kgate::config::Config;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// docker/docker-compose.yml as JSON, parsed by PyYAML.
fn compose() -> Value {
    let out = Command::new(crate::harness::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo().join("docker/docker-compose.yml"))
        .output()
        .expect("run the test venv's python (.ci/setup-tests)");
    assert!(
        out.status.success(),
        "docker-compose.yml is not valid YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

#[test]
fn compose_runs_kraft_kafka_three_gateway_nodes_nginx_and_the_demo_producer() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["demo", "kafka", "kgate", "kgate-b", "kgate-c", "nginx"]),
        "{c}"
    );
    // Three nodes of one image and config, each with its own id and data volume.
    let nodes = ["kgate", "kgate-b", "kgate-c"].map(|n| &services[n]);
    let ids: BTreeSet<&str> = nodes
        .iter()
        .map(|n| {
            n["environment"]["KGATE_CLUSTER__NODE_ID"]
                .as_str()
                .expect("node id")
        })
        .collect();
    assert_eq!(ids.len(), 3, "distinct node ids");
    let data: BTreeSet<&str> = nodes
        .iter()
        .map(|n| n["volumes"][1].as_str().unwrap().split(':').next().unwrap())
        .collect();
    assert_eq!(data.len(), 3, "a data volume per node");
    for n in &nodes {
        assert_eq!(n["command"], services["kgate"]["command"]);
        assert_eq!(n["volumes"][0], services["kgate"]["volumes"][0]);
    }
    let kafka = &services["kafka"]["environment"];
    assert_eq!(
        kafka["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft mode"
    );
    assert!(!c.to_string().to_lowercase().contains("zookeeper"));
    let advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].as_str().unwrap();

    let docker = repo().join("docker");
    let kgate = &services["kgate"];
    let dockerfile = docker
        .join(kgate["build"]["context"].as_str().unwrap())
        .join(kgate["build"]["dockerfile"].as_str().unwrap());
    assert!(dockerfile.is_file(), "{}", dockerfile.display());
    assert_eq!(
        services["demo"]["image"], kgate["image"],
        "demo runs the gateway image"
    );
    assert_eq!(services["demo"]["command"][0], "demo");
    // Every bind-mounted file exists; the gateway's config is the one mounted.
    for service in services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    docker.join(source).exists(),
                    "{source} is mounted but missing"
                );
            }
        }
    }
    let config_path = kgate["command"]
        .as_array()
        .unwrap()
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .and_then(Value::as_str)
        .unwrap();
    let mounted = kgate["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|v| v.contains(config_path))
        .expect("the config file is mounted");
    let config = Config::load(Some(&docker.join(mounted.split(':').next().unwrap())))
        .expect("docker/kgate.toml is a valid kgate config");
    assert_eq!(
        format!("PLAINTEXT://{}", config.kafka.bootstrap_servers),
        advertised,
        "the gateway reaches Kafka at its advertised listener"
    );
    assert!(
        !config.cluster.positions_topic.is_empty(),
        "the nodes share sessions through a positions topic"
    );
    // nginx spreads clients over every node on its listen port, with no stickiness.
    let nginx = std::fs::read_to_string(docker.join("nginx.conf")).unwrap();
    for node in ["kgate", "kgate-b", "kgate-c"] {
        let upstream = format!("server {node}:{};", config.server.listen.port());
        assert!(nginx.contains(&upstream), "nginx.conf has {upstream}");
    }
    let directives: String = nginx
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!directives.contains("ip_hash") && !directives.contains("sticky"));
    assert_eq!(services["nginx"]["ports"][0], "8080:80");
}

/// The apt packages a script or Dockerfile installs (words after `install`, minus options).
fn apt_packages(text: &str) -> BTreeSet<String> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.split_once("apt-get install").map(|(_, rest)| rest))
        .flat_map(|rest| rest.split("&&").next().unwrap_or("").split_whitespace())
        .filter(|w| !w.starts_with('-') && !w.starts_with('"') && !w.starts_with('$'))
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerfile_builds_like_the_readme() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let setup = std::fs::read_to_string(repo().join(".ci/setup")).unwrap();
    // .ci/setup names its packages as need+=(...) entries.
    let mut wanted: BTreeSet<String> = setup
        .lines()
        .filter_map(|l| l.split_once("need+=(").map(|(_, r)| r))
        .flat_map(|r| r.trim_end_matches(')').split_whitespace())
        .map(str::to_string)
        .collect();
    // The rust image already has the C toolchain and curl.
    for present in ["build-essential", "curl", "ca-certificates"] {
        wanted.remove(present);
    }
    let build_stage = dockerfile.split("\nFROM ").nth(1).unwrap_or("");
    let installed = apt_packages(build_stage);
    let missing: Vec<_> = wanted.difference(&installed).collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile lacks {missing:?} that .ci/setup installs"
    );
    assert!(wanted.len() >= 5, "parsed .ci/setup packages: {wanted:?}");
    // The same cargo build the README's command runs, with the lock file.
    assert!(dockerfile.contains("cargo build --release --locked --bin kgate"));
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("docker/Dockerfile"),
        "the README documents the image"
    );
    // Everything the build copies exists in the repository.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(
                Path::new(&repo().join(source)).exists(),
                "COPY {source}: missing"
            );
        }
    }
    // The image's default config is one the gateway accepts.
    assert!(dockerfile.contains("COPY config/production.toml /etc/kgate/kgate.toml"));
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/kgate/kgate.toml"]"#));
}

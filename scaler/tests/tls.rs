//! TLS and mTLS on the gRPC port as KEDA uses them (`enableTLS`, `caCert`, `tlsClientCert`,
//! `tlsClientKey`), and certificates rotated in place being picked up without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gpuscale_scaler::keda::pb::ScaledObjectRef;
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf certificate and key signed by `ca`.
fn leaf(ca: &Ca, name: &str) -> (String, String) {
    let p = CertificateParams::new(vec![name.to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, body: &str) {
    // Write then rename, as cert-manager and kubelet secret updates do.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

async fn call(grpc: &str, server_ca: &str, client: Option<&(String, String)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel: Channel = tonic::transport::Endpoint::from_shared(grpc.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut c = ExternalScalerClient::new(channel);
    let mut md = HashMap::new();
    md.insert("deployment".to_string(), "qwen".to_string());
    c.get_metric_spec(ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_certificate_rotation() {
    let dir = std::env::temp_dir().join(format!("gpuscale-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server_ca = ca("server CA 1");
    let client_ca = ca("client CA");
    let (cert, key) = leaf(&server_ca, "localhost");
    write(&dir, "tls.crt", &cert);
    write(&dir, "tls.key", &key);
    write(&dir, "ca.crt", &client_ca.pem);
    let keda = leaf(&client_ca, "keda-operator");
    let stranger = leaf(&ca("someone else"), "keda-operator");

    let scaler = common::scaler(&[
        "--tls-cert",
        dir.join("tls.crt").to_str().unwrap(),
        "--tls-key",
        dir.join("tls.key").to_str().unwrap(),
        "--tls-client-ca",
        dir.join("ca.crt").to_str().unwrap(),
        "--tls-reload-interval",
        "200ms",
    ])
    .await;

    call(&scaler.grpc, &server_ca.pem, Some(&keda)).await.unwrap();
    assert!(
        call(&scaler.grpc, &server_ca.pem, None).await.is_err(),
        "no client certificate"
    );
    assert!(
        call(&scaler.grpc, &server_ca.pem, Some(&stranger)).await.is_err(),
        "client CA not trusted"
    );

    // Rotate the server certificate to one from a new CA: new connections get it, without a restart.
    let server_ca2 = ca("server CA 2");
    let (cert2, key2) = leaf(&server_ca2, "localhost");
    write(&dir, "tls.key", &key2);
    write(&dir, "tls.crt", &cert2);
    let start = Instant::now();
    loop {
        if call(&scaler.grpc, &server_ca2.pem, Some(&keda)).await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rotated certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        call(&scaler.grpc, &server_ca.pem, Some(&keda)).await.is_err(),
        "old certificate still served"
    );

    // A broken file keeps the last good certificate.
    write(&dir, "tls.crt", "not a certificate");
    tokio::time::sleep(Duration::from_millis(600)).await;
    call(&scaler.grpc, &server_ca2.pem, Some(&keda)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_files_fail_at_start_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("gpuscale-badtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), "garbage").unwrap();
    std::fs::write(dir.join("tls.key"), "garbage").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
        .args(["--grpc-listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--tls-cert", dir.join("tls.crt").to_str().unwrap()])
        .args(["--tls-key", dir.join("tls.key").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.crt") && err.contains("BEGIN CERTIFICATE"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! KEDA's wire contract, byte by byte: hand-built protobuf for every message (field numbers
//! and wire types from keda.md section 1), decoded with the generated types, so a renumbered
//! or retyped field fails here; and the method paths, called by name over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use gpuscale_scaler::keda::pb::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use prost::Message;

fn string_field(tag: u8, s: &str) -> Vec<u8> {
    let mut v = vec![tag, u8::try_from(s.len()).unwrap()];
    v.extend_from_slice(s.as_bytes());
    v
}

fn message_field(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag, u8::try_from(body.len()).unwrap()];
    v.extend_from_slice(body);
    v
}

fn double_field(tag: u8, x: f64) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&x.to_le_bytes());
    v
}

/// ScaledObjectRef{name: "qwen" (1), namespace: "llm" (2), scalerMetadata (3): {"deployment": "qwen"}}
fn scaled_object_ref_bytes() -> Vec<u8> {
    let mut b = string_field(0x0a, "qwen");
    b.extend(string_field(0x12, "llm"));
    let mut entry = string_field(0x0a, "deployment");
    entry.extend(string_field(0x12, "qwen"));
    b.extend(message_field(0x1a, &entry));
    b
}

#[test]
fn every_message_decodes_from_hand_built_bytes() {
    let r = ScaledObjectRef::decode(scaled_object_ref_bytes().as_slice()).unwrap();
    assert_eq!((r.name.as_str(), r.namespace.as_str()), ("qwen", "llm"));
    assert_eq!(
        r.scaler_metadata.get("deployment").map(String::as_str),
        Some("qwen")
    );

    // IsActiveResponse{result (1, varint): true}
    assert!(
        IsActiveResponse::decode([0x08u8, 0x01].as_slice())
            .unwrap()
            .result
    );

    // MetricSpec{metricName (1), targetSize (2, varint int64), targetSizeFloat (3, double)}
    let mut spec = string_field(0x0a, "m");
    spec.extend([0x10, 0x07]);
    spec.extend(double_field(0x19, 2.5));
    let s = MetricSpec::decode(spec.as_slice()).unwrap();
    assert_eq!(
        (s.metric_name.as_str(), s.target_size, s.target_size_float),
        ("m", 7, 2.5)
    );
    // GetMetricSpecResponse{metricSpecs (1, repeated message)}
    let mut resp = message_field(0x0a, &spec);
    resp.extend(message_field(0x0a, &spec));
    assert_eq!(
        GetMetricSpecResponse::decode(resp.as_slice())
            .unwrap()
            .metric_specs
            .len(),
        2
    );

    // GetMetricsRequest{scaledObjectRef (1, message), metricName (2)}
    let mut req = message_field(0x0a, &scaled_object_ref_bytes());
    req.extend(string_field(0x12, "gpuscale-replicas-llm-qwen"));
    let q = GetMetricsRequest::decode(req.as_slice()).unwrap();
    assert_eq!(q.metric_name, "gpuscale-replicas-llm-qwen");
    assert_eq!(q.scaled_object_ref.unwrap().name, "qwen");

    // MetricValue{metricName (1), metricValue (2, varint int64), metricValueFloat (3, double)}
    let mut val = string_field(0x0a, "m");
    val.extend([0x10, 0x03]);
    val.extend(double_field(0x19, 2.25));
    let v = MetricValue::decode(val.as_slice()).unwrap();
    assert_eq!((v.metric_value, v.metric_value_float), (3, 2.25));
    // GetMetricsResponse{metricValues (1, repeated message)}
    let m = GetMetricsResponse::decode(message_field(0x0a, &val).as_slice()).unwrap();
    assert_eq!(m.metric_values, vec![v.clone()]);

    // And the other way: what we send is what KEDA's Go code reads.
    assert_eq!(v.encode_to_vec(), val);
    assert_eq!(s.encode_to_vec(), spec);
}

/// Call each RPC by its full path, as grpc-go does, with the prost codec and no generated client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_paths_are_keda_s() {
    let scaler = common::scaler(&["--poll-interval", "100ms"]).await;
    let channel = tonic::transport::Endpoint::from_shared(scaler.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut md = HashMap::new();
    md.insert("deployment".to_string(), "qwen".to_string());
    let r = ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    };
    grpc.ready().await.unwrap();
    let spec: tonic::Response<GetMetricSpecResponse> = grpc
        .unary(
            tonic::Request::new(r.clone()),
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/GetMetricSpec"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap();
    assert_eq!(spec.get_ref().metric_specs.len(), 1);
    // No collectors: no signal, so IsActive and GetMetrics are UNAVAILABLE, never invented.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<_, IsActiveResponse, _>(
            tonic::Request::new(r.clone()),
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/IsActive"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<_, GetMetricsResponse, _>(
            tonic::Request::new(GetMetricsRequest {
                scaled_object_ref: Some(r.clone()),
                metric_name: spec.get_ref().metric_specs[0].metric_name.clone(),
            }),
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/GetMetrics"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("no collectors"), "{}", e.message());
    grpc.ready().await.unwrap();
    let stream = grpc
        .server_streaming::<_, IsActiveResponse, _>(
            tonic::Request::new(r),
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/StreamIsActive"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert!(stream.is_ok());
    // KEDA main's unreleased StreamMetricSpec is not served: UNIMPLEMENTED makes KEDA fall back.
    grpc.ready().await.unwrap();
    let e = grpc
        .server_streaming::<_, GetMetricSpecResponse, _>(
            tonic::Request::new(ScaledObjectRef::default()),
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/StreamMetricSpec"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

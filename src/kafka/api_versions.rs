//! ApiVersions: the table of what this broker implements, and the answer to
//! clients that ask for it.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;

/// Every API chronik implements end to end, with the versions it handles.
/// Advertised intersected with what the codec knows (`ApiKey::valid_versions`).
const IMPLEMENTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    // v7 added MAX_TIMESTAMP (-3) queries, which are not implemented: clients negotiate v6.
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    // v0..2 allocate ids; v3+ also bump an idempotent producer's epoch (KIP-360). v6 (two-phase
    // commit, KIP-939) is transactional only.
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeProducers, 0, 0),
];

/// The versions of `api_key` this broker answers, if it implements it.
pub fn supported(api_key: ApiKey) -> Option<VersionRange> {
    IMPLEMENTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(key, min, max)| {
            VersionRange {
                min: *min,
                max: *max,
            }
            .intersect(&key.valid_versions())
        })
        .filter(|range| !range.is_empty())
}

/// Whether `version` of `api_key` is one this broker answers.
pub fn is_supported(api_key: ApiKey, version: i16) -> bool {
    supported(api_key).is_some_and(|range| (range.min..=range.max).contains(&version))
}

fn api_keys() -> Vec<ApiVersion> {
    IMPLEMENTED
        .iter()
        .filter_map(|(key, _, _)| {
            supported(*key).map(|range| {
                let mut api = ApiVersion::default();
                api.api_key = *key as i16;
                api.min_version = range.min;
                api.max_version = range.max;
                api
            })
        })
        .collect()
}

/// The answer to a supported ApiVersions request. Only fields that differ
/// from their defaults are set, so no tagged field is written (librdkafka
/// before 2.2 misreads them).
pub fn response() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = api_keys();
    response
}

/// The answer to an ApiVersions request of a version this broker does not
/// know: UNSUPPORTED_VERSION, to be encoded as v0 so any client can read it
/// and retry with a version it finds in the list.
pub fn unsupported_version_response() -> ApiVersionsResponse {
    let mut response = response();
    response.error_code = ResponseError::UnsupportedVersion.code();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn advertises_within_codec_ranges() {
        for api in api_keys() {
            let key = ApiKey::try_from(api.api_key).unwrap();
            let valid = key.valid_versions();
            assert!(api.min_version >= valid.min && api.max_version <= valid.max);
        }
        assert!(is_supported(ApiKey::ApiVersions, 0));
        assert!(is_supported(ApiKey::ApiVersions, 3));
        assert!(!is_supported(ApiKey::ApiVersions, 99));
        assert!(!is_supported(ApiKey::FindCoordinator, 1));
        assert!(!is_supported(ApiKey::Produce, 2));
    }

    #[test]
    fn v3_response_writes_no_tagged_fields() {
        let response = response();
        let mut buf = BytesMut::new();
        response.encode(&mut buf, 3).unwrap();
        // Last byte: the (empty) top-level tagged-field count.
        assert_eq!(*buf.last().unwrap(), 0);
        // error_code, compact array of N keys (N * 7 bytes incl. empty tags), throttle, tags.
        let n = response.api_keys.len();
        assert_eq!(buf.len(), 2 + 1 + n * 7 + 4 + 1);
    }
}

//! API version negotiation: the highest version both the broker (from
//! ApiVersions) and this client support.

use std::collections::BTreeMap;

use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use serde::Serialize;

use super::ClientError;

/// Version ranges this client implements. Produce and Fetch stop at 12: v13
/// names topics by id only.
const CLIENT_RANGES: &[(ApiKey, &str, i16, i16)] = &[
    (ApiKey::Produce, "Produce", 3, 12),
    (ApiKey::Fetch, "Fetch", 4, 12),
    (ApiKey::ListOffsets, "ListOffsets", 1, 9),
    (ApiKey::Metadata, "Metadata", 1, 12),
    (ApiKey::CreateTopics, "CreateTopics", 2, 7),
    (ApiKey::InitProducerId, "InitProducerId", 0, 4),
];

/// The negotiated version of each API the benchmarks use.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Versions {
    pub produce: Option<i16>,
    pub fetch: Option<i16>,
    pub list_offsets: Option<i16>,
    pub metadata: Option<i16>,
    pub create_topics: Option<i16>,
    pub init_producer_id: Option<i16>,
    /// The broker's advertised range per API name, as reported.
    #[serde(skip)]
    pub broker: BTreeMap<String, (i16, i16)>,
}

impl Versions {
    /// Intersects the broker's advertised ranges with the client's.
    pub fn negotiate(response: &ApiVersionsResponse) -> Versions {
        let mut v = Versions::default();
        for api in &response.api_keys {
            let Ok(key) = ApiKey::try_from(api.api_key) else {
                continue;
            };
            v.broker
                .insert(format!("{key:?}"), (api.min_version, api.max_version));
            let Some(&(_, _, cmin, cmax)) = CLIENT_RANGES.iter().find(|r| r.0 == key) else {
                continue;
            };
            let lo = cmin.max(api.min_version);
            let hi = cmax.min(api.max_version);
            let chosen = (lo <= hi).then_some(hi);
            match key {
                ApiKey::Produce => v.produce = chosen,
                ApiKey::Fetch => v.fetch = chosen,
                ApiKey::ListOffsets => v.list_offsets = chosen,
                ApiKey::Metadata => v.metadata = chosen,
                ApiKey::CreateTopics => v.create_topics = chosen,
                ApiKey::InitProducerId => v.init_producer_id = chosen,
                _ => {}
            }
        }
        v
    }

    /// The negotiated version of an API, or an error naming it.
    pub fn require(chosen: Option<i16>, name: &'static str) -> Result<i16, ClientError> {
        chosen.ok_or(ClientError::NoCommonVersion(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    fn range(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn picks_the_highest_common_version_and_none_without_overlap() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            range(ApiKey::Produce, 3, 13),
            range(ApiKey::Metadata, 0, 9),
            range(ApiKey::Fetch, 13, 18),
        ]);
        let v = Versions::negotiate(&response);
        assert_eq!(v.produce, Some(12));
        assert_eq!(v.metadata, Some(9));
        assert_eq!(v.fetch, None);
        assert_eq!(v.create_topics, None);
        assert!(matches!(
            Versions::require(v.fetch, "Fetch"),
            Err(ClientError::NoCommonVersion("Fetch"))
        ));
    }
}

//! Named volumes: an agent's `/data` (kept across stop and start, so its replay store survives)
//! and the NATS server's JetStream store. A new volume mounted at `/data` takes the owner of the
//! image's `/data` (the container user).

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::RemoveVolumeOptionsBuilder;

use crate::SandboxError;

/// Creates a local volume with labels (creating an existing one is a no-op for the engine).
pub(super) async fn ensure(
    docker: &Docker,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<(), SandboxError> {
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_owned()),
            driver: Some("local".to_owned()),
            labels: Some(labels),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|source| SandboxError::Docker {
            operation: "create volume",
            source,
        })
}

/// Removes a volume (nothing happens if it is gone).
pub(super) async fn remove(docker: &Docker, name: &str) -> Result<(), SandboxError> {
    match docker
        .remove_volume(
            name,
            Some(RemoveVolumeOptionsBuilder::default().force(true).build()),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(source) => Err(SandboxError::Docker {
            operation: "remove volume",
            source,
        }),
    }
}

//! `zkmesh ca`: the mesh CA and the certificates it issues.

use std::time::Duration;

use zkmesh_kit::identity::{Identity, MeshCa, Role};

use crate::args::CaCommand;
use crate::{EXIT_USAGE, exit};

/// `zkmesh ca init` and `zkmesh ca issue`.
pub(crate) fn ca(cmd: CaCommand) -> anyhow::Result<i32> {
    match cmd {
        CaCommand::Init { dir, mesh_name } => {
            let ca = MeshCa::generate(&mesh_name).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            ca.save(&dir).map_err(|e| exit(EXIT_USAGE, e.to_string()))?;
            println!("created the CA of mesh {mesh_name:?} in {}", dir.display());
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            host,
            out,
            days,
        } => {
            let ca = MeshCa::load(&dir)?;
            let role = Role::parse(&role).ok_or_else(|| {
                exit(
                    EXIT_USAGE,
                    format!("unknown role {role:?}: use admin, user, service or node"),
                )
            })?;
            let id = Identity::new(&ca.mesh, role, &name);
            ca.issue(&id, &host, Duration::from_secs(days * 86400))?
                .write(&out, &name)?;
            println!("issued {} -> {}/{name}.crt", id.uri(), out.display());
        }
    }
    Ok(0)
}

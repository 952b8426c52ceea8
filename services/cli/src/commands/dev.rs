//! `zkmesh dev`: a persistent local mesh and the client config that points at it.

use std::path::Path;

use crate::args::DevArgs;
use crate::commands::zkmesh_home;
use crate::{EXIT_USAGE, exit};
use zkmesh_client::mesh::{LocalMesh, MeshOptions};

/// `zkmesh dev`: starts the mesh, writes the client config, serves until a signal, removes it.
pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<i32> {
    let home = zkmesh_home();
    let dir = args.dir.unwrap_or_else(|| home.join("dev"));
    // One dev mesh per data directory: two would share its databases.
    let lock = dir.join("dev.pid");
    if let Ok(pid) = std::fs::read_to_string(&lock)
        && Path::new("/proc").join(pid.trim()).exists()
    {
        return Err(exit(
            EXIT_USAGE,
            format!(
                "another `zkmesh dev` (pid {}) is running on {}; stop it first, or use --dir",
                pid.trim(),
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&lock, std::process::id().to_string())?;
    let mut options = MeshOptions::new(&dir);
    options.workers = args.workers;
    if args.port_base != 0 {
        options.listen =
            std::array::from_fn(|i| format!("127.0.0.1:{}", args.port_base as usize + i));
    }
    let mesh = LocalMesh::start(options).await?;
    let config_path = home.join("client.toml");
    mesh.client.save(&config_path)?;
    println!("zkmesh dev mesh is up (data in {})", dir.display());
    println!("  registry   {}", mesh.client.registry);
    println!("  scheduler  {}", mesh.client.scheduler);
    println!("  ledger     {}", mesh.client.ledger);
    println!("  verifier   {}", mesh.client.verifier);
    for (name, s) in [
        ("registry", &mesh.registry),
        ("scheduler", &mesh.scheduler),
        ("ledger", &mesh.ledger),
        ("verifier", &mesh.verifier),
    ] {
        if let Some(m) = s.metrics_addr {
            println!("  metrics    http://{m}/metrics  ({name})");
        }
    }
    println!("  client config written to {}", config_path.display());
    println!("try: zkmesh run sha256 --input hello      (Ctrl-C stops the mesh)");
    zkmesh_kit::server::shutdown_signal().await;
    eprintln!("stopping...");
    let mesh_client = mesh.client.clone();
    mesh.stop().await;
    // Remove the client config only if it is still ours.
    if std::fs::read_to_string(&config_path).ok() == toml::to_string_pretty(&mesh_client).ok() {
        let _ = std::fs::remove_file(&config_path);
    }
    let _ = std::fs::remove_file(&lock);
    Ok(0)
}

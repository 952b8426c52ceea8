//! The command line's definition: every command, its flags and their help (clap), and the
//! parsing of values clap cannot check alone.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use zkmesh_proto::*;

use crate::{EXIT_USAGE, exit};

#[derive(Parser, Debug)]
#[command(
    name = "zkmesh",
    version,
    about = "Run WebAssembly on a mesh of machines and get verified results"
)]
pub struct Cli {
    /// Client config of the mesh to talk to (default: $ZKMESH_CLIENT_CONFIG, then
    /// $ZKMESH_HOME/client.toml as written by `zkmesh dev`).
    #[arg(long, global = true, value_name = "FILE")]
    pub mesh: Option<PathBuf>,
    /// More logs on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum CircuitsCommand {
    /// The size classes, their capacities and the state of their keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a class's setup on the verifier now (admin); shows progress.
    Setup { class: String },
    /// Save a class's verifying key.
    Vk {
        class: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a module once and print its verified output. Starts an embedded mesh when none is
    /// configured.
    Run(RunArgs),
    /// Start a persistent local mesh (four services, workers) and write a client config that
    /// the other commands use.
    Dev(DevArgs),
    /// Upload a module and print what the mesh thinks of it.
    Upload {
        module: String,
        #[arg(long)]
        json: bool,
    },
    /// Submit a task and print its id without waiting.
    Submit(RunArgs),
    /// A task's current state.
    Status {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a task's events until it ends.
    Watch {
        task: String,
        #[arg(long)]
        json: bool,
    },
    /// A task's result (output, verdict, receipts, credits).
    Result {
        task: String,
        #[arg(long)]
        json: bool,
        /// Write the raw output bytes to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write a self-contained result bundle (module, input, output, receipt, proof and the
        /// verifying key's id) for `zkmesh verify` (proof policy only).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Check a result bundle offline: exit 0 when its proof is valid, 1 (with the reason) when
    /// it is not.
    Verify {
        bundle: PathBuf,
        /// The module, to check against the bundle's hash instead of the bundle's own copy.
        #[arg(long, value_name = "WASM")]
        module: Option<PathBuf>,
        /// The verifying key (`zkmesh circuits vk CLASS --out FILE`); without it, the configured
        /// mesh's verifier is asked for it.
        #[arg(long, value_name = "FILE")]
        vk: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// zkVM circuit classes: list them, set one up (admin), save a verifying key.
    #[command(subcommand)]
    Circuits(CircuitsCommand),
    /// Cancel a task; its held credits are released.
    Cancel { task: String },
    /// Your recent tasks.
    Tasks {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List the built-in example guests.
    Guests,
    /// Nodes: list, approve, deny, revoke, join tokens (admin).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Credits: balance, history, audit, mint.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// The mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the registry service.
    #[command(subcommand)]
    Registry(ServeCommand),
    /// Run the scheduler service.
    #[command(subcommand)]
    Scheduler(ServeCommand),
    /// Run the verifier service, or show its settlement key.
    #[command(subcommand)]
    Verifier(VerifierCommand),
    /// Run a worker node.
    Worker {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VerifierCommand {
    /// Serve until SIGINT or SIGTERM. Settings come from the file and `ZKMESH_VERIFIER_*`.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the public half of the verifier's settlement key (hex), making the key file
    /// (`key_file`) if it does not exist yet: the ledger's `verifier_keys` and the client
    /// config's `verifier_public_key` take it.
    Key {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    /// Serve until SIGINT or SIGTERM. Settings come from the file and `ZKMESH_<SERVICE>_*`.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A .wasm or .wat file, or the name of a built-in guest (see `zkmesh guests`).
    pub module: String,
    /// The input, as text.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// The input, from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// receipt, replicate:K or proof.
    #[arg(long, default_value = "receipt")]
    pub policy: String,
    /// Fuel limit (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub fuel: u64,
    /// Memory limit in MiB (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub memory_mib: u32,
    /// Wall-clock limit in seconds (0: the scheduler's default).
    #[arg(long, default_value_t = 0)]
    pub timeout_secs: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Always start an embedded mesh, even when one is configured.
    #[arg(long)]
    pub embedded: bool,
    /// Workers in the embedded mesh (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// After the task, audit the embedded mesh's ledger (exit 1 if the audit fails).
    #[arg(long)]
    pub audit: bool,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Data directory (default: $ZKMESH_HOME/dev).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// First of four consecutive ports for registry, scheduler, ledger, verifier (0: any).
    #[arg(long, default_value_t = 7001)]
    pub port_base: u16,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Approve a waiting node, granting it slots.
    Approve {
        node: String,
        /// The most tasks it may run at once (default: the registry's `default_node_slots`);
        /// given for an approved node, it changes its grant.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        slots: Option<u32>,
        /// Only for a node enrolled before join tokens named operators: the operator it belongs
        /// to.
        #[arg(long)]
        operator: Option<String>,
    },
    Deny {
        node: String,
    },
    Revoke {
        node: String,
    },
    /// Create a join token for new nodes of one operator.
    Token {
        /// The operator the nodes belong to (their account `operator/NAME` is paid; replicas of a
        /// task go to different operators). Required: nodes cannot name their own.
        #[arg(long)]
        operator: String,
        /// The most tasks each node may run at once when the token approves it (with
        /// --pre-approved; default: the registry's `default_node_slots`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        slots: Option<u32>,
        #[arg(long)]
        pre_approved: bool,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        #[arg(long, default_value_t = 86400)]
        ttl_secs: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// An account's balance (default: yours).
    Balance { account: Option<String> },
    /// An account's journal entries (default: yours).
    History {
        account: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-check the whole journal: hashes, chain, signatures, balances and conservation.
    Audit {
        #[arg(long)]
        json: bool,
        /// Fail unless the journal still holds this entry, as an earlier audit printed it
        /// (SEQ:HASH): proves the ledger kept the history that audit checked.
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<zkmesh_client::Expect>,
        /// Do not demand the head the last passed audit of this ledger remembered (kept under
        /// the client config's directory, in ledger-heads/); it is replaced when this passes.
        #[arg(long)]
        forget: bool,
    },
    /// Mint micro-credits into an account (admin).
    Mint {
        account: String,
        amount: u64,
        /// An idempotency key: running the command again with it mints once.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Run the ledger service.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the public half of the ledger's journal key (hex), making the key file
    /// (`key_file`) if it does not exist yet: the client config's `ledger_public_key` takes it.
    Key {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new mesh CA (ca.crt, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// The mesh's name, part of every identity it certifies.
        #[arg(long, default_value = "zkmesh")]
        mesh_name: String,
    },
    /// Issue a certificate from the CA in DIR.
    Issue {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// admin, user, service or node.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        /// Extra server names (DNS names or IPs) for a service certificate.
        #[arg(long)]
        host: Vec<String>,
        /// Where to write NAME.crt and NAME.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Make a node issuer for the registry: an intermediate CA, certified by the mesh CA in
    /// DIR, that can sign node certificates only. Point the registry's `ca_dir` at OUT and keep
    /// DIR's ca.key offline.
    Issuer {
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// Where to write issuer.crt, issuer.key and the mesh CA's ca.crt.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1825)]
        days: u64,
    },
    /// Revoke a certificate of any role, everywhere (asks the registry; needs the admin
    /// certificate of the client config). Every service refuses it within its refresh.
    Revoke {
        /// The certificate: a PEM file, or its serial number in hex (as `ca issue` prints).
        certificate: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Parses `receipt`, `proof` or `replicate:K`.
pub fn parse_policy(s: &str) -> anyhow::Result<VerificationPolicy> {
    s.parse()
        .map_err(|e: zkmesh_proto::UnknownName| exit(EXIT_USAGE, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn policies_parse_strictly() {
        assert_eq!(parse_policy("receipt").unwrap().kind(), PolicyKind::Receipt);
        assert_eq!(parse_policy("replicate:3").unwrap().replicas, 3);
        assert_eq!(parse_policy("proof").unwrap().kind(), PolicyKind::Proof);
        for bad in [
            "",
            "replicate",
            "replicate:1",
            "replicate:x",
            "Receipt",
            "proof:2",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
    }
}

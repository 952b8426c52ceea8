//! Lowering: a WebAssembly module becomes a [`Program`], deterministically.
//!
//! The prover and the verifier both call [`lower`] on the module bytes and must get the same
//! program, so nothing here depends on anything but the bytes: no hash-map iteration order, no
//! environment. A module outside the provable subset gets an [`LowerError::Unprovable`] that names
//! the function, the byte offset and the instruction or feature that keeps it out.

use std::collections::BTreeMap;

use wasmparser::{
    BlockType, CompositeInnerType, DataKind, ElementItems, ElementKind, ExternalKind, FuncType,
    Operator, Parser, Payload, TypeRef, ValType, Validator, WasmFeatures,
};

use crate::isa::{
    GLOBAL_FIRST, GLOBAL_LIMIT_HIT, GLOBAL_OUT_LEN, Instr, MAX_PAGES, MAX_SLOT, Op, PAGE, Program,
    Space, WORD, status,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LowerError {
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error("not provable: {what}{}", at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())]
    Unprovable { what: String, at: Option<String> },
}

fn unprovable(what: impl Into<String>) -> LowerError {
    LowerError::Unprovable {
        what: what.into(),
        at: None,
    }
}

/// The features the zkVM accepts on top of WebAssembly 1.0. Anything else is refused by the
/// validator with its own message.
fn features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::FLOATS
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Host {
    InputLen,
    ReadInput,
    WriteOutput,
    /// Not imports: `memory.copy` and `memory.fill`, lowered as calls of byte loops.
    MemCopy,
    MemFill,
}

/// Callee of a `call`: a host import or a defined function.
#[derive(Clone, Copy)]
enum Callee {
    Host(Host),
    Defined(usize),
}

struct Module<'a> {
    types: Vec<FuncType>,
    funcs: Vec<Callee>,
    /// Type index of every function, imports first.
    func_types: Vec<u32>,
    bodies: Vec<wasmparser::FunctionBody<'a>>,
    globals: Vec<(ValType, u64)>,
    mem: Option<(u64, u64)>,
    table: Option<u64>,
    elements: Vec<(u64, Vec<u32>)>,
    data: Vec<(u64, &'a [u8])>,
    entry: Option<u32>,
    start: Option<u32>,
}

/// Pages a 32-bit WebAssembly memory can have.
const WASM32_PAGES: u64 = 1 << 16;

/// Lowers a module for a run whose memory may grow to the zkVM's own bound ([`MAX_PAGES`]
/// pages): [`lower_limited`] with that limit.
pub fn lower(wasm: &[u8]) -> Result<Program, LowerError> {
    lower_limited(wasm, MAX_PAGES * PAGE)
}

/// Lowers a module for a run under a memory limit of `memory_limit_bytes`, with the limit's
/// semantics in the mesh's runtime: a `memory.grow` past the limit, like one past the
/// module's declared maximum, returns -1; a trap after a grow the limit refused halts with
/// [`status::OUT_OF_MEMORY`] instead of its own status. A run whose memory could grow past
/// [`MAX_PAGES`] under this limit, or whose initial memory is over the limit, is refused: the
/// zkVM could not compute what the runtime would.
///
/// Validation happens first, so every later error is about the subset.
pub fn lower_limited(wasm: &[u8], memory_limit_bytes: u64) -> Result<Program, LowerError> {
    Validator::new_with_features(features())
        .validate_all(wasm)
        .map_err(|e| match e.message() {
            m if m.contains("proposal not enabled") || m.contains("support is not enabled") => {
                unprovable(format!(
                    "uses a WebAssembly feature outside the subset: {m}"
                ))
            }
            m => LowerError::Invalid(m.to_string()),
        })?;
    let mut m = parse(wasm)?;
    let limit = memory_limit_bytes / PAGE;
    if let Some((initial, declared)) = m.mem {
        let reach = declared.min(limit);
        if reach > MAX_PAGES {
            return Err(unprovable(format!(
                "under a memory limit of {} MiB its memory may grow to {reach} pages; the zkVM \
                 proves memories of at most {MAX_PAGES} pages (a memory limit below 1 GiB, or \
                 a declared maximum of at most {MAX_PAGES} pages, makes it provable)",
                memory_limit_bytes >> 20
            )));
        }
        if initial > limit {
            return Err(unprovable(format!(
                "its initial memory of {initial} pages is more than the memory limit of {} MiB",
                memory_limit_bytes >> 20
            )));
        }
        m.mem = Some((initial, reach.min(declared)));
    }
    let mut lowerer = Lowerer::new(&m)?;
    lowerer.mem_limit = limit;
    lowerer.run(&m)
}

fn const_expr(expr: &wasmparser::ConstExpr<'_>) -> Result<u64, LowerError> {
    let mut reader = expr.get_operators_reader();
    let value = match reader
        .read()
        .map_err(|e| LowerError::Invalid(e.to_string()))?
    {
        Operator::I32Const { value } => value as u32 as u64,
        Operator::I64Const { value } => value as u64,
        other => return Err(unprovable(format!("constant expression {other:?}"))),
    };
    Ok(value)
}

fn parse(wasm: &[u8]) -> Result<Module<'_>, LowerError> {
    let invalid = |e: wasmparser::BinaryReaderError| LowerError::Invalid(e.to_string());
    let mut m = Module {
        types: vec![],
        funcs: vec![],
        func_types: vec![],
        bodies: vec![],
        globals: vec![],
        mem: None,
        table: None,
        elements: vec![],
        data: vec![],
        entry: None,
        start: None,
    };
    let mut defined = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(r) => {
                for group in r {
                    for sub in group.map_err(invalid)?.into_types() {
                        match sub.composite_type.inner {
                            CompositeInnerType::Func(f) => m.types.push(f),
                            _ => return Err(unprovable("non-function types")),
                        }
                    }
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    let import = import.map_err(invalid)?;
                    let TypeRef::Func(ty) = import.ty else {
                        return Err(unprovable(format!(
                            "imports {}.{}: only the zkmesh ABI functions may be imported",
                            import.module, import.name
                        )));
                    };
                    let host = match (import.module, import.name) {
                        ("zkmesh", "input_len") => Host::InputLen,
                        ("zkmesh", "read_input") => Host::ReadInput,
                        ("zkmesh", "write_output") => Host::WriteOutput,
                        (module, name) => {
                            return Err(unprovable(format!(
                                "imports {module}.{name}: the provable ABI is zkmesh.input_len, \
                                 zkmesh.read_input and zkmesh.write_output (WASI modules can run \
                                 under replicate or receipt)"
                            )));
                        }
                    };
                    let want: (&[ValType], &[ValType]) = match host {
                        Host::InputLen => (&[], &[ValType::I32]),
                        Host::ReadInput => (&[ValType::I32; 3], &[ValType::I32]),
                        Host::WriteOutput => (&[ValType::I32; 2], &[]),
                        Host::MemCopy | Host::MemFill => unreachable!(),
                    };
                    let t = &m.types[ty as usize];
                    if (t.params(), t.results()) != want {
                        return Err(unprovable(format!(
                            "imports zkmesh.{} with the wrong type",
                            import.name
                        )));
                    }
                    m.funcs.push(Callee::Host(host));
                    m.func_types.push(ty);
                }
            }
            Payload::FunctionSection(r) => {
                for ty in r {
                    m.funcs.push(Callee::Defined(defined));
                    m.func_types.push(ty.map_err(invalid)?);
                    defined += 1;
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(invalid)?;
                    if m.table.is_some() {
                        return Err(unprovable("more than one table"));
                    }
                    m.table = Some(t.ty.initial);
                }
            }
            Payload::MemorySection(r) => {
                for mem in r {
                    let mem = mem.map_err(invalid)?;
                    if m.mem.is_some() || mem.memory64 || mem.shared {
                        return Err(unprovable(
                            "more than one memory, or a 64-bit or shared one",
                        ));
                    }
                    if mem.initial > MAX_PAGES {
                        return Err(unprovable(format!(
                            "an initial memory of {} pages (the zkVM allows {MAX_PAGES})",
                            mem.initial
                        )));
                    }
                    // The declared maximum; the limit a run is lowered for caps it.
                    m.mem = Some((mem.initial, mem.maximum.unwrap_or(WASM32_PAGES)));
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    let g = g.map_err(invalid)?;
                    if !matches!(g.ty.content_type, ValType::I32 | ValType::I64) {
                        return Err(unprovable("a global that is not i32 or i64"));
                    }
                    m.globals
                        .push((g.ty.content_type, const_expr(&g.init_expr)?));
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(invalid)?;
                    if e.kind == ExternalKind::Func && (e.name == "run" || e.name == "main") {
                        // `run` wins over `main`, as in the runtime.
                        if e.name == "run" || m.entry.is_none() {
                            m.entry = Some(e.index);
                        }
                    }
                }
            }
            Payload::StartSection { func, .. } => m.start = Some(func),
            Payload::ElementSection(r) => {
                for el in r {
                    let el = el.map_err(invalid)?;
                    let ElementKind::Active {
                        table_index,
                        offset_expr,
                    } = el.kind
                    else {
                        continue;
                    };
                    if table_index.unwrap_or(0) != 0 {
                        return Err(unprovable("element segments for a second table"));
                    }
                    let offset = const_expr(&offset_expr)?;
                    let ElementItems::Functions(funcs) = el.items else {
                        return Err(unprovable("element segments given as expressions"));
                    };
                    let funcs = funcs
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(invalid)?;
                    m.elements.push((offset, funcs));
                }
            }
            Payload::DataSection(r) => {
                for d in r {
                    let d = d.map_err(invalid)?;
                    match d.kind {
                        DataKind::Active { offset_expr, .. } => {
                            m.data.push((const_expr(&offset_expr)?, d.data));
                        }
                        DataKind::Passive => {
                            return Err(unprovable("passive data segments (memory.init)"));
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => m.bodies.push(body),
            _ => {}
        }
    }
    if m.entry.is_none() {
        return Err(unprovable("no exported `run` (or `main`) function"));
    }
    // Instantiation checks every element segment against the table, empty ones included.
    let table = m.table.unwrap_or(0);
    if m.elements.iter().any(|(o, f)| o + f.len() as u64 > table) {
        return Err(LowerError::Invalid("element segment out of bounds".into()));
    }
    Ok(m)
}

/// A control frame during lowering.
struct Ctl {
    is_loop: bool,
    /// Operand-stack height under the block's parameters.
    height: usize,
    params: usize,
    results: usize,
    /// Loops: the pc of the first instruction.
    start: usize,
    /// Jumps to patch with the pc after the block's end.
    patches: Vec<usize>,
    /// `if` without `else` yet: the BrZ to patch with the else (or end) pc.
    else_patch: Option<usize>,
    /// The rest of the block is unreachable (after br, return, unreachable).
    dead: bool,
}

impl Ctl {
    fn arity(&self) -> usize {
        if self.is_loop {
            self.params
        } else {
            self.results
        }
    }
}

/// Where an operand the lowering has not yet put in its stack slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// In this local's slot (`local.get`).
    Local(u32),
    /// A constant (`i32.const`, `i64.const`; wide).
    Const(u64, bool),
}

/// Where a jump target still has to be filled in.
enum Fixup {
    /// `code[at].imm = entry of function`
    Entry { at: usize, func: u32 },
    /// `code[at].imm |= dispatch base of type`
    Dispatch { at: usize, ty: u32 },
    /// `code[at].imm = pc of a helper`
    Helper { at: usize, host: Host },
}

struct Lowerer {
    code: Vec<Instr>,
    fixups: Vec<Fixup>,
    entries: Vec<usize>,
    helpers: Vec<(Host, usize)>,
    /// Function (as numbered by the module) → signature (params, results).
    sigs: Vec<(usize, usize)>,
    /// Type index → (params, results).
    type_sigs: Vec<(usize, usize)>,
    /// Parameters of the function being lowered (its link slot).
    params: usize,
    /// The run's memory limit in pages: growing past it traps.
    mem_limit: u64,
}

fn sig_of(t: &FuncType) -> (usize, usize) {
    (t.params().len(), t.results().len())
}

fn block_sig(types: &[FuncType], ty: BlockType) -> (usize, usize) {
    match ty {
        BlockType::Empty => (0, 0),
        BlockType::Type(_) => (0, 1),
        BlockType::FuncType(i) => sig_of(&types[i as usize]),
    }
}

fn slot(x: usize) -> Result<u32, LowerError> {
    u32::try_from(x)
        .ok()
        .filter(|&s| s < MAX_SLOT)
        .ok_or_else(|| unprovable(format!("a function frame of more than {MAX_SLOT} slots")))
}

impl Lowerer {
    fn new(m: &Module<'_>) -> Result<Self, LowerError> {
        let type_sigs: Vec<_> = m.types.iter().map(sig_of).collect();
        let sigs = m
            .func_types
            .iter()
            .map(|&t| type_sigs[t as usize])
            .collect();
        Ok(Lowerer {
            code: vec![],
            fixups: vec![],
            entries: vec![0; m.bodies.len()],
            helpers: vec![],
            sigs,
            type_sigs,
            params: 0,
            mem_limit: MAX_PAGES,
        })
    }

    fn emit(&mut self, i: Instr) -> usize {
        self.code.push(i);
        self.code.len() - 1
    }

    fn run(mut self, m: &Module<'_>) -> Result<Program, LowerError> {
        // Prologue: frame 0 has no locals; slot 0 is a dummy link, the operand stack starts at 1.
        for f in m.start.into_iter().chain(m.entry) {
            let (p, r) = self.sigs[f as usize];
            if p != 0 {
                return Err(unprovable(
                    "an entry or start function that takes parameters",
                ));
            }
            // The runtime calls the entry as `() -> ()` and traps on any other type: a run it
            // would end with a trap must not be proved as one that returned.
            if r != 0 {
                return Err(unprovable(
                    "an entry or start function that returns results",
                ));
            }
            self.emit_call(f, 1, 0)?;
        }
        self.emit(Instr {
            imm: status::OK,
            ..Instr::new(Op::Halt)
        });

        for (i, body) in m.bodies.iter().enumerate() {
            self.entries[i] = self.code.len();
            let func = m
                .funcs
                .iter()
                .position(|c| matches!(c, Callee::Defined(d) if *d == i));
            let func = func.expect("every body has a function");
            self.function(m, func, body).map_err(|e| match e {
                LowerError::Unprovable { what, at: None } => LowerError::Unprovable {
                    what,
                    at: Some(format!("function {func}")),
                },
                e => e,
            })?;
        }

        // Dispatch tables for call_indirect, one per type that is called indirectly.
        let mut dispatch: Vec<(u32, usize)> = vec![];
        let table_len = m.table.unwrap_or(0);
        let mut table = vec![None; table_len as usize];
        for (offset, funcs) in &m.elements {
            for (k, f) in funcs.iter().enumerate() {
                let at = *offset as usize + k;
                if at >= table.len() {
                    return Err(LowerError::Invalid("element segment out of bounds".into()));
                }
                table[at] = Some(*f);
            }
        }
        let mut wanted: Vec<u32> = self
            .fixups
            .iter()
            .filter_map(|f| match f {
                Fixup::Dispatch { ty, .. } => Some(*ty),
                _ => None,
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for ty in wanted {
            let base = self.code.len();
            dispatch.push((ty, base));
            for entry in &table {
                let instr = match entry {
                    Some(f)
                        if m.types[m.func_types[*f as usize] as usize] == m.types[ty as usize] =>
                    {
                        match m.funcs[*f as usize] {
                            Callee::Defined(_) => {
                                let at = self.emit(Instr::new(Op::Jump));
                                self.fixups.push(Fixup::Entry { at, func: *f });
                                continue;
                            }
                            Callee::Host(_) => {
                                return Err(unprovable("a host function in the call table"));
                            }
                        }
                    }
                    _ => Instr {
                        imm: status::INDIRECT_CALL,
                        ..Instr::new(Op::Halt)
                    },
                };
                self.emit(instr);
            }
            self.emit(Instr {
                imm: status::INDIRECT_CALL,
                ..Instr::new(Op::Halt)
            });
        }

        for host in [
            Host::ReadInput,
            Host::WriteOutput,
            Host::MemCopy,
            Host::MemFill,
        ] {
            if self
                .fixups
                .iter()
                .any(|f| matches!(f, Fixup::Helper { host: h, .. } if *h == host))
            {
                let pc = self.code.len();
                self.helpers.push((host, pc));
                match host {
                    Host::ReadInput => self.read_input_helper(),
                    Host::WriteOutput => self.write_output_helper(),
                    Host::MemCopy => self.mem_copy_helper(),
                    Host::MemFill => self.mem_fill_helper(),
                    Host::InputLen => unreachable!(),
                }
            }
        }

        for fixup in std::mem::take(&mut self.fixups) {
            match fixup {
                Fixup::Entry { at, func } => {
                    let Callee::Defined(d) = m.funcs[func as usize] else {
                        unreachable!("host calls use helpers")
                    };
                    self.code[at].imm = self.entries[d] as u64;
                }
                Fixup::Dispatch { at, ty } => {
                    let base = dispatch.iter().find(|(t, _)| *t == ty).expect("built").1;
                    self.code[at].imm |= base as u64;
                }
                Fixup::Helper { at, host } => {
                    let pc = self
                        .helpers
                        .iter()
                        .find(|(h, _)| *h == host)
                        .expect("built")
                        .1;
                    self.code[at].imm = pc as u64;
                }
            }
        }

        self.route_traps();

        let mut globals = vec![0u64; GLOBAL_FIRST as usize];
        globals[GLOBAL_OUT_LEN as usize] = 0;
        globals.extend(m.globals.iter().map(|(_, v)| *v));

        let (mem_pages, mem_max_pages) = m.mem.unwrap_or((0, 0));
        let (data_base, data) = data_words(&m.data, mem_pages)?;
        Ok(Program {
            code: self.code,
            globals,
            data_base,
            data,
            mem_pages,
            mem_max_pages,
        })
    }

    /// A call of function `f` whose frame starts at slot `frame` of the caller.
    fn emit_call(&mut self, f: u32, frame: usize, params: usize) -> Result<(), LowerError> {
        let at = self.emit(Instr {
            a: slot(frame)?,
            b: slot(params)?,
            ..Instr::new(Op::Call)
        });
        self.fixups.push(Fixup::Entry { at, func: f });
        Ok(())
    }

    fn function(
        &mut self,
        m: &Module<'_>,
        func: usize,
        body: &wasmparser::FunctionBody<'_>,
    ) -> Result<(), LowerError> {
        let invalid = |e: wasmparser::BinaryReaderError| LowerError::Invalid(e.to_string());
        let ty = &m.types[m.func_types[func] as usize];
        let (p, r) = sig_of(ty);
        self.params = p;
        for t in ty.params().iter().chain(ty.results()) {
            if !matches!(t, ValType::I32 | ValType::I64) {
                return Err(unprovable(format!("a function signature with {t}")));
            }
        }
        let mut locals = p;
        for local in body.get_locals_reader().map_err(invalid)? {
            let (n, t) = local.map_err(invalid)?;
            if !matches!(t, ValType::I32 | ValType::I64) {
                return Err(unprovable(format!("a local of type {t}")));
            }
            locals += n as usize;
        }
        let local_slot = |i: u32| -> Result<u32, LowerError> {
            let i = i as usize;
            slot(if i < p { i } else { i + 1 })
        };
        let base = locals + 1;
        let st = |h: usize| slot(base + h);

        // Locals that are not parameters start at zero.
        for l in p..locals {
            self.emit(Instr {
                c: slot(l + 1)?,
                ..Instr::new(Op::Const)
            });
        }

        let mut ctl = vec![Ctl {
            is_loop: false,
            height: 0,
            params: 0,
            results: r,
            start: 0,
            patches: vec![],
            else_patch: None,
            dead: false,
        }];
        let mut h: usize = 0;
        // Blocks opened inside dead code, skipped until their `end`.
        let mut dead_depth = 0usize;
        // Operands not yet in their stack slot: stack height → where the value is. Instructions
        // that only read their operands take them from the local, or a constant as an
        // immediate, without a step of their own; control flow, calls and a write to that
        // local put them in place first, so every label is reached with the whole stack in its
        // slots.
        let mut pending: BTreeMap<usize, Src> = BTreeMap::new();
        // The previous instruction, when its only effect is writing the top stack slot: a
        // `local.set` right after it makes it write the local instead.
        let mut last_def: Option<usize> = None;

        let mut reader = body.get_operators_reader().map_err(invalid)?;
        while !reader.eof() {
            let offset = reader.original_position();
            let op = reader.read().map_err(invalid)?;
            let at = |what: String| LowerError::Unprovable {
                what,
                at: Some(format!("function {func}, offset {offset:#x}")),
            };
            if ctl.last().is_some_and(|c| c.dead) {
                match op {
                    Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                        dead_depth += 1;
                        continue;
                    }
                    Operator::End if dead_depth > 0 => {
                        dead_depth -= 1;
                        continue;
                    }
                    Operator::Else if dead_depth > 0 => continue,
                    Operator::End | Operator::Else => {}
                    _ => continue,
                }
            }
            use Operator as O;
            let prev_def = last_def.take();
            if matches!(
                op,
                O::Block { .. }
                    | O::Loop { .. }
                    | O::Else
                    | O::End
                    | O::Br { .. }
                    | O::BrTable { .. }
                    | O::Return
                    | O::Call { .. }
                    | O::CallIndirect { .. }
                    | O::Select
                    | O::TypedSelect { .. }
                    | O::MemoryCopy { .. }
                    | O::MemoryFill { .. }
                    | O::Unreachable
                    | O::I32DivS
                    | O::I64DivS
                    | O::I32RemS
                    | O::I64RemS
                    | O::I32DivU
                    | O::I64DivU
                    | O::I32RemU
                    | O::I64RemU
            ) {
                self.flush(&mut pending, h, base)?;
            } else if matches!(op, O::BrIf { .. } | O::If { .. }) {
                // Everything but the condition: both ways lead to labels.
                self.flush(&mut pending, h - 1, base)?;
            }
            let take = |this: &mut Self, pending: &mut BTreeMap<usize, Src>, k: usize| {
                this.take(pending, k, base)
            };
            let un = |op: Op, wide: bool, a: u32, c: u32| Instr {
                wide,
                a,
                c,
                ..Instr::new(op)
            };
            macro_rules! binop {
                ($op:expr, $wide:expr) => {
                    binop!(@ $op, $wide, false)
                };
                ($op:expr, $wide:expr, swap) => {
                    binop!(@ $op, $wide, true)
                };
                (@ $op:expr, $wide:expr, $swap:expr) => {{
                    self.binop(&mut pending, h, base, $op, $wide, $swap)?;
                    last_def = Some(self.code.len() - 1);
                    h -= 1;
                }};
            }
            macro_rules! unop {
                ($op:expr, $wide:expr) => {{
                    let a = take(self, &mut pending, h - 1)?;
                    last_def = Some(self.emit(un($op, $wide, a, st(h - 1)?)));
                }};
            }
            macro_rules! load {
                ($memarg:expr, $width:expr, $signed:expr, $wide:expr) => {{
                    let from = take(self, &mut pending, h - 1)?;
                    let (addr, t) = (st(h - 1)?, st(h)?);
                    let load = |width: u8, imm: u64, c: u32, signed: bool, wide: bool| Instr {
                        space: Space::Memory,
                        a: from,
                        c,
                        imm,
                        width,
                        signed,
                        wide,
                        ..Instr::new(Op::Load)
                    };
                    if $width == 3 && $memarg.align < 2 {
                        // Not promised 4-aligned: two 4-byte loads, which the circuit takes at any
                        // alignment, joined.
                        self.emit(load(2, $memarg.offset, t, false, true));
                        self.emit(load(2, $memarg.offset + 4, t + 1, false, true));
                        self.emit(Instr {
                            imm: 32,
                            c: t + 2,
                            wide: true,
                            ..Instr::new(Op::Const)
                        });
                        self.emit(Instr {
                            a: t + 1,
                            b: t + 2,
                            c: t + 1,
                            wide: true,
                            ..Instr::new(Op::Shl)
                        });
                        self.emit(Instr {
                            a: t,
                            b: t + 1,
                            c: addr,
                            wide: true,
                            ..Instr::new(Op::Or)
                        });
                    } else {
                        last_def =
                            Some(self.emit(load($width, $memarg.offset, addr, $signed, $wide)));
                    }
                }};
            }
            macro_rules! store {
                ($memarg:expr, $width:expr) => {{
                    let addr = take(self, &mut pending, h - 2)?;
                    let value = take(self, &mut pending, h - 1)?;
                    let t = st(h)?;
                    let store = |width: u8, imm: u64, b: u32| Instr {
                        space: Space::Memory,
                        a: addr,
                        b,
                        imm,
                        width,
                        ..Instr::new(Op::Store)
                    };
                    // The circuit stores up to 4 bytes inside one 4-byte word, or 8 bytes at a
                    // 4-aligned address. A store not promised that alignment is split into
                    // pieces of its promised alignment, which never cross a word.
                    let piece = ($memarg.align as u8).min($width);
                    let aligned = piece == $width || ($width == 3 && $memarg.align >= 2);
                    if aligned {
                        self.emit(store($width, $memarg.offset, value));
                    } else {
                        let bytes = 1u64 << piece;
                        self.emit(Instr {
                            imm: 8 * bytes,
                            c: t,
                            wide: true,
                            ..Instr::new(Op::Const)
                        });
                        self.emit(store(piece, $memarg.offset, value));
                        let mut from = value;
                        for k in 1..(1u64 << ($width - piece)) {
                            self.emit(Instr {
                                a: from,
                                b: t,
                                c: t + 1,
                                wide: true,
                                ..Instr::new(Op::ShrU)
                            });
                            self.emit(store(piece, $memarg.offset + k * bytes, t + 1));
                            from = t + 1;
                        }
                    }
                    h -= 2;
                }};
            }
            match op {
                O::Nop => last_def = prev_def,
                O::Unreachable => {
                    self.emit(Instr {
                        imm: status::UNREACHABLE,
                        ..Instr::new(Op::Halt)
                    });
                    ctl.last_mut().unwrap().dead = true;
                }
                O::Block { blockty } | O::Loop { blockty } => {
                    let (bp, br) = block_sig(&m.types, blockty);
                    ctl.push(Ctl {
                        is_loop: matches!(op, O::Loop { .. }),
                        height: h - bp,
                        params: bp,
                        results: br,
                        start: self.code.len(),
                        patches: vec![],
                        else_patch: None,
                        dead: false,
                    });
                }
                O::If { blockty } => {
                    let (bp, br) = block_sig(&m.types, blockty);
                    h -= 1;
                    let cond = take(self, &mut pending, h)?;
                    let at = self.emit(Instr {
                        a: cond,
                        ..Instr::new(Op::BrZ)
                    });
                    ctl.push(Ctl {
                        is_loop: false,
                        height: h - bp,
                        params: bp,
                        results: br,
                        start: 0,
                        patches: vec![],
                        else_patch: Some(at),
                        dead: false,
                    });
                }
                O::Else => {
                    let jump = self.emit(Instr::new(Op::Jump));
                    let c = ctl.last_mut().unwrap();
                    c.patches.push(jump);
                    let brz = c.else_patch.take().expect("validated: else after if");
                    self.code[brz].imm = self.code.len() as u64;
                    c.dead = false;
                    h = c.height + c.params;
                }
                O::End => {
                    let c = ctl.pop().expect("validated");
                    let end = self.code.len() as u64;
                    if let Some(brz) = c.else_patch {
                        // `if` without `else`: its parameters are its results.
                        self.code[brz].imm = end;
                    }
                    for p in &c.patches {
                        self.code[*p].imm = end;
                    }
                    h = c.height + c.results;
                    if ctl.is_empty() {
                        // Reached by falling off the end, or by a branch to the function's own
                        // label (`br_if 0`, `br_table` at the outermost level).
                        if !c.dead || !c.patches.is_empty() {
                            self.emit_return_from(r, h, base)?;
                        }
                        break;
                    }
                }
                O::Br { relative_depth } => {
                    self.emit_br(&mut ctl, relative_depth, h, base)?;
                    ctl.last_mut().unwrap().dead = true;
                }
                O::BrIf { relative_depth } => {
                    h -= 1;
                    let cond = take(self, &mut pending, h)?;
                    let target = &ctl[ctl.len() - 1 - relative_depth as usize];
                    if target.arity() == 0 || target.height == h - target.arity() {
                        let at = self.emit(Instr {
                            a: cond,
                            ..Instr::new(Op::BrNz)
                        });
                        self.patch_target(&mut ctl, relative_depth, at);
                    } else {
                        let skip = self.emit(Instr {
                            a: cond,
                            ..Instr::new(Op::BrZ)
                        });
                        self.emit_br(&mut ctl, relative_depth, h, base)?;
                        self.code[skip].imm = self.code.len() as u64;
                    }
                }
                O::BrTable { targets } => {
                    h -= 1;
                    let index = st(h)?;
                    let depths: Vec<u32> = targets
                        .targets()
                        .chain(std::iter::once(Ok(targets.default())))
                        .collect::<Result<_, _>>()
                        .map_err(invalid)?;
                    let len = depths.len() - 1;
                    let table = self.emit(Instr {
                        a: index,
                        b: slot(len)
                            .map_err(|_| at("a br_table of more than 65535 targets".into()))?,
                        ..Instr::new(Op::BrTable)
                    });
                    self.code[table].imm = self.code.len() as u64;
                    // One jump per entry: straight to the target when no values move, else to a
                    // stub after the table that moves them first.
                    let first = self.code.len();
                    for _ in &depths {
                        self.emit(Instr::new(Op::Jump));
                    }
                    for (k, depth) in depths.iter().enumerate() {
                        let target = &ctl[ctl.len() - 1 - *depth as usize];
                        if target.arity() == 0 || target.height == h - target.arity() {
                            self.patch_target(&mut ctl, *depth, first + k);
                        } else {
                            self.code[first + k].imm = self.code.len() as u64;
                            self.emit_br(&mut ctl, *depth, h, base)?;
                        }
                    }
                    ctl.last_mut().unwrap().dead = true;
                }
                O::Return => {
                    self.emit_return_from(r, h, base)?;
                    ctl.last_mut().unwrap().dead = true;
                }
                O::Call { function_index } => {
                    let (cp, cr) = self.sigs[function_index as usize];
                    match m.funcs[function_index as usize] {
                        Callee::Host(Host::InputLen) => {
                            self.emit(Instr {
                                space: Space::Input,
                                imm: 0,
                                c: st(h)?,
                                ..Instr::new(Op::GetM)
                            });
                        }
                        Callee::Host(host) => {
                            let at = self.emit(Instr {
                                a: st(h - cp)?,
                                b: slot(cp)?,
                                ..Instr::new(Op::Call)
                            });
                            self.fixups.push(Fixup::Helper { at, host });
                        }
                        Callee::Defined(_) => {
                            if cr > 1 {
                                return Err(at("a call of a function with several results".into()));
                            }
                            self.emit_call(function_index, base + h - cp, cp)?;
                        }
                    }
                    h = h - cp + cr;
                }
                O::CallIndirect {
                    type_index,
                    table_index,
                } => {
                    if table_index != 0 {
                        return Err(at("call_indirect through a second table".into()));
                    }
                    let (cp, cr) = self.type_sigs[type_index as usize];
                    if cr > 1 {
                        return Err(at("a call of a function with several results".into()));
                    }
                    h -= 1;
                    let len = m.table.unwrap_or(0);
                    let at_ = self.emit(Instr {
                        a: st(h)?,
                        b: st(h - cp)?,
                        c: slot(cp)?,
                        imm: len << 32,
                        ..Instr::new(Op::CallIndirect)
                    });
                    self.fixups.push(Fixup::Dispatch {
                        at: at_,
                        ty: type_index,
                    });
                    h = h - cp + cr;
                }
                O::Drop => {
                    h -= 1;
                    pending.remove(&h);
                }
                O::Select | O::TypedSelect { .. } => {
                    self.emit(Instr {
                        a: st(h - 3)?,
                        b: st(h - 2)?,
                        imm: st(h - 1)? as u64,
                        c: st(h - 3)?,
                        ..Instr::new(Op::Select)
                    });
                    h -= 2;
                }
                O::LocalGet { local_index } => {
                    pending.insert(h, Src::Local(local_slot(local_index)?));
                    h += 1;
                }
                O::LocalSet { local_index } | O::LocalTee { local_index } => {
                    let local = local_slot(local_index)?;
                    let top = h - 1;
                    let from = pending.get(&top).copied();
                    // Operands below that still read this local must be copied out first.
                    let stale: Vec<usize> = pending
                        .range(..top)
                        .filter(|(_, l)| **l == Src::Local(local))
                        .map(|(k, _)| *k)
                        .collect();
                    let fuse = prev_def.filter(|&d| {
                        d + 1 == self.code.len() && from.is_none() && stale.is_empty()
                    });
                    if from == Some(Src::Local(local)) {
                        // The local's own value: nothing changes.
                    } else if let Some(d) = fuse
                        && self.code[d].c == st(top)?
                    {
                        // The value was just computed into the top slot: compute it into the
                        // local instead.
                        self.code[d].c = local;
                        pending.insert(top, Src::Local(local));
                    } else {
                        for k in stale {
                            pending.remove(&k);
                            self.emit(Instr {
                                a: local,
                                c: st(k)?,
                                ..Instr::new(Op::Copy)
                            });
                        }
                        self.emit(match from {
                            Some(Src::Const(imm, wide)) => Instr {
                                imm,
                                wide,
                                c: local,
                                ..Instr::new(Op::Const)
                            },
                            Some(Src::Local(l)) => ins(Op::Copy, l, 0, local),
                            None => ins(Op::Copy, st(top)?, 0, local),
                        });
                    }
                    if matches!(op, O::LocalSet { .. }) {
                        pending.remove(&top);
                        h -= 1;
                    }
                }
                O::GlobalGet { global_index } => {
                    last_def = Some(self.emit(Instr {
                        space: Space::Globals,
                        imm: GLOBAL_FIRST + global_index as u64,
                        c: st(h)?,
                        ..Instr::new(Op::GetM)
                    }));
                    h += 1;
                }
                O::GlobalSet { global_index } => {
                    let a = take(self, &mut pending, h - 1)?;
                    self.emit(Instr {
                        space: Space::Globals,
                        imm: GLOBAL_FIRST + global_index as u64,
                        a,
                        ..Instr::new(Op::SetM)
                    });
                    h -= 1;
                }
                O::I32Load { memarg } => load!(memarg, 2, false, false),
                O::I64Load { memarg } => load!(memarg, 3, false, true),
                O::I32Load8S { memarg } => load!(memarg, 0, true, false),
                O::I32Load8U { memarg } => load!(memarg, 0, false, false),
                O::I32Load16S { memarg } => load!(memarg, 1, true, false),
                O::I32Load16U { memarg } => load!(memarg, 1, false, false),
                O::I64Load8S { memarg } => load!(memarg, 0, true, true),
                O::I64Load8U { memarg } => load!(memarg, 0, false, true),
                O::I64Load16S { memarg } => load!(memarg, 1, true, true),
                O::I64Load16U { memarg } => load!(memarg, 1, false, true),
                O::I64Load32S { memarg } => load!(memarg, 2, true, true),
                O::I64Load32U { memarg } => load!(memarg, 2, false, true),
                O::I32Store { memarg } => store!(memarg, 2),
                O::I64Store { memarg } => store!(memarg, 3),
                O::I32Store8 { memarg } | O::I64Store8 { memarg } => store!(memarg, 0),
                O::I32Store16 { memarg } | O::I64Store16 { memarg } => store!(memarg, 1),
                O::I64Store32 { memarg } => store!(memarg, 2),
                O::MemoryCopy { .. } | O::MemoryFill { .. } => {
                    let host = if matches!(op, O::MemoryCopy { .. }) {
                        Host::MemCopy
                    } else {
                        Host::MemFill
                    };
                    let at = self.emit(Instr {
                        a: st(h - 3)?,
                        b: 3,
                        ..Instr::new(Op::Call)
                    });
                    self.fixups.push(Fixup::Helper { at, host });
                    h -= 3;
                }
                O::MemorySize { .. } => {
                    last_def = Some(self.emit(Instr {
                        c: st(h)?,
                        ..Instr::new(Op::MemSize)
                    }));
                    h += 1;
                }
                O::MemoryGrow { .. } => {
                    let a = take(self, &mut pending, h - 1)?;
                    self.grow_limit(a, st(h)?, st(h + 1)?);
                    let mut i = un(Op::MemGrow, false, a, st(h - 1)?);
                    i.imm = m.mem.map(|(_, max)| max).unwrap_or(0);
                    self.emit(i);
                }
                O::I32Const { value } => {
                    pending.insert(h, Src::Const(value as u32 as u64, false));
                    h += 1;
                }
                O::I64Const { value } => {
                    pending.insert(h, Src::Const(value as u64, true));
                    h += 1;
                }
                O::I32Eqz => unop!(Op::Eqz, false),
                O::I64Eqz => unop!(Op::Eqz, true),
                O::I32Eq => binop!(Op::Eq, false),
                O::I64Eq => binop!(Op::Eq, true),
                O::I32Ne => binop!(Op::Ne, false),
                O::I64Ne => binop!(Op::Ne, true),
                O::I32LtU => binop!(Op::LtU, false),
                O::I64LtU => binop!(Op::LtU, true),
                O::I32LtS => binop!(Op::LtS, false),
                O::I64LtS => binop!(Op::LtS, true),
                O::I32GtU => binop!(Op::LtU, false, swap),
                O::I64GtU => binop!(Op::LtU, true, swap),
                O::I32GtS => binop!(Op::LtS, false, swap),
                O::I64GtS => binop!(Op::LtS, true, swap),
                O::I32GeU => binop!(Op::GeU, false),
                O::I64GeU => binop!(Op::GeU, true),
                O::I32GeS => binop!(Op::GeS, false),
                O::I64GeS => binop!(Op::GeS, true),
                O::I32LeU => binop!(Op::GeU, false, swap),
                O::I64LeU => binop!(Op::GeU, true, swap),
                O::I32LeS => binop!(Op::GeS, false, swap),
                O::I64LeS => binop!(Op::GeS, true, swap),
                O::I32Clz => unop!(Op::Clz, false),
                O::I64Clz => unop!(Op::Clz, true),
                O::I32Ctz => unop!(Op::Ctz, false),
                O::I64Ctz => unop!(Op::Ctz, true),
                O::I32Popcnt => unop!(Op::Popcnt, false),
                O::I64Popcnt => unop!(Op::Popcnt, true),
                O::I32Add => binop!(Op::Add, false),
                O::I64Add => binop!(Op::Add, true),
                O::I32Sub => binop!(Op::Sub, false),
                O::I64Sub => binop!(Op::Sub, true),
                O::I32Mul => binop!(Op::Mul, false),
                O::I64Mul => binop!(Op::Mul, true),
                O::I32DivS
                | O::I64DivS
                | O::I32RemS
                | O::I64RemS
                | O::I32DivU
                | O::I64DivU
                | O::I32RemU
                | O::I64RemU => {
                    let wide = matches!(op, O::I64DivS | O::I64RemS | O::I64DivU | O::I64RemU);
                    let signed = matches!(op, O::I32DivS | O::I64DivS | O::I32RemS | O::I64RemS);
                    let rem = matches!(op, O::I32RemS | O::I64RemS | O::I32RemU | O::I64RemU);
                    self.division(wide, signed, rem, st(h - 2)?, st(h - 1)?, st(h)?)?;
                    h -= 1;
                }
                O::I32And => binop!(Op::And, false),
                O::I64And => binop!(Op::And, true),
                O::I32Or => binop!(Op::Or, false),
                O::I64Or => binop!(Op::Or, true),
                O::I32Xor => binop!(Op::Xor, false),
                O::I64Xor => binop!(Op::Xor, true),
                O::I32Shl => binop!(Op::Shl, false),
                O::I64Shl => binop!(Op::Shl, true),
                O::I32ShrS => binop!(Op::ShrS, false),
                O::I64ShrS => binop!(Op::ShrS, true),
                O::I32ShrU => binop!(Op::ShrU, false),
                O::I64ShrU => binop!(Op::ShrU, true),
                O::I32Rotl => binop!(Op::Rotl, false),
                O::I64Rotl => binop!(Op::Rotl, true),
                O::I32Rotr => binop!(Op::Rotr, false),
                O::I64Rotr => binop!(Op::Rotr, true),
                O::I32WrapI64 => unop!(Op::Wrap, false),
                // An i32 is kept zero-extended, so it already is its own i64 extension.
                O::I64ExtendI32U => last_def = prev_def,
                O::I64ExtendI32S => {
                    let a = take(self, &mut pending, h - 1)?;
                    let mut i = un(Op::ExtendS, true, a, st(h - 1)?);
                    i.width = 2;
                    last_def = Some(self.emit(i));
                }
                O::I32Extend8S
                | O::I32Extend16S
                | O::I64Extend8S
                | O::I64Extend16S
                | O::I64Extend32S => {
                    let wide = !matches!(op, O::I32Extend8S | O::I32Extend16S);
                    let a = take(self, &mut pending, h - 1)?;
                    let mut i = un(Op::ExtendS, wide, a, st(h - 1)?);
                    i.width = match op {
                        O::I32Extend8S | O::I64Extend8S => 0,
                        O::I32Extend16S | O::I64Extend16S => 1,
                        _ => 2,
                    };
                    last_def = Some(self.emit(i));
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name.split([' ', '{']).next().unwrap_or("").to_string();
                    let why = if name.starts_with("F32") || name.starts_with("F64") {
                        "floating point is outside the provable subset"
                    } else {
                        "outside the provable subset"
                    };
                    return Err(at(format!("instruction {name} ({why})")));
                }
            }
            pending.retain(|&k, _| k < h);
        }
        Ok(())
    }

    /// Puts the pending operands below height `below` into their stack slots.
    fn flush(
        &mut self,
        pending: &mut BTreeMap<usize, Src>,
        below: usize,
        base: usize,
    ) -> Result<(), LowerError> {
        while let Some((&k, _)) = pending.range(..below).next() {
            self.place(pending, k, base, true)?;
        }
        Ok(())
    }

    /// The slot the operand at height `k` is read from, consuming its pending entry: its local,
    /// or its stack slot (a pending constant is written there first).
    fn take(
        &mut self,
        pending: &mut BTreeMap<usize, Src>,
        k: usize,
        base: usize,
    ) -> Result<u32, LowerError> {
        self.place(pending, k, base, false)
    }

    /// [`Lowerer::take`], or with `materialize` the operand always in its stack slot.
    fn place(
        &mut self,
        pending: &mut BTreeMap<usize, Src>,
        k: usize,
        base: usize,
        materialize: bool,
    ) -> Result<u32, LowerError> {
        let at = slot(base + k)?;
        match pending.remove(&k) {
            Some(Src::Local(local)) if !materialize => Ok(local),
            Some(Src::Local(local)) => {
                self.emit(ins(Op::Copy, local, 0, at));
                Ok(at)
            }
            Some(Src::Const(imm, wide)) => {
                self.emit(Instr {
                    imm,
                    wide,
                    c: at,
                    ..Instr::new(Op::Const)
                });
                Ok(at)
            }
            None => Ok(at),
        }
    }

    /// A binary operation on the two operands on top of a stack of height `h` (`swap`: the
    /// top is the first operand), its result in the lower one's slot. A constant second
    /// operand (or first, when the operation commutes) becomes the immediate.
    #[allow(clippy::too_many_arguments)]
    fn binop(
        &mut self,
        pending: &mut BTreeMap<usize, Src>,
        h: usize,
        base: usize,
        op: Op,
        wide: bool,
        swap: bool,
    ) -> Result<(), LowerError> {
        let (mut ka, mut kb) = if swap { (h - 1, h - 2) } else { (h - 2, h - 1) };
        let konst = |k: usize| match pending.get(&k) {
            Some(Src::Const(v, _)) => Some(*v),
            _ => None,
        };
        let commutes = matches!(
            op,
            Op::Add | Op::Mul | Op::And | Op::Or | Op::Xor | Op::Eq | Op::Ne
        );
        if commutes && konst(ka).is_some() && konst(kb).is_none() {
            (ka, kb) = (kb, ka);
        }
        let imm = konst(kb);
        if imm.is_some() {
            pending.remove(&kb);
        }
        let a = self.take(pending, ka, base)?;
        let b = match imm {
            Some(_) => 0,
            None => self.take(pending, kb, base)?,
        };
        self.emit(Instr {
            wide,
            a,
            b,
            c: slot(base + h - 2)?,
            imm: imm.unwrap_or(0),
            imm_b: imm.is_some(),
            ..Instr::new(op)
        });
        Ok(())
    }

    /// Records that the jump at `at` goes to the label `depth` levels out.
    fn patch_target(&mut self, ctl: &mut [Ctl], depth: u32, at: usize) {
        let n = ctl.len();
        let target = &mut ctl[n - 1 - depth as usize];
        if target.is_loop {
            self.code[at].imm = target.start as u64;
        } else {
            target.patches.push(at);
        }
    }

    /// An unconditional branch: move the label's values to their place, then jump.
    fn emit_br(
        &mut self,
        ctl: &mut [Ctl],
        depth: u32,
        h: usize,
        base: usize,
    ) -> Result<(), LowerError> {
        let n = ctl.len();
        if depth as usize == n - 1 {
            // A branch to the function's own label is a return.
            return self.emit_return_from(ctl[0].results, h, base);
        }
        let target = &ctl[n - 1 - depth as usize];
        let (arity, th) = (target.arity(), target.height);
        for k in 0..arity {
            let (src, dst) = (h - arity + k, th + k);
            if src != dst {
                self.emit(Instr {
                    a: slot(base + src)?,
                    c: slot(base + dst)?,
                    ..Instr::new(Op::Copy)
                });
            }
        }
        let at = self.emit(Instr::new(Op::Jump));
        self.patch_target(ctl, depth, at);
        Ok(())
    }

    /// Return from the current function with its `r` results on top of a stack of height `h`.
    fn emit_return_from(&mut self, r: usize, h: usize, base: usize) -> Result<(), LowerError> {
        if r > 1 {
            return Err(unprovable("a function with several results"));
        }
        self.emit(Instr {
            a: if r == 1 { slot(base + h - 1)? } else { 0 },
            b: slot(self.params)?,
            c: r as u32,
            ..Instr::new(Op::Return)
        });
        Ok(())
    }

    /// Checks that bytes `[slot a, slot a + slot n)` lie inside linear memory (even when empty,
    /// as the host functions do), else jumps to the helper-relative `trap`. Leaves the memory
    /// size in bytes in slot `t`; slot `t + 1` is scratch.
    fn memory_range_check(top: u64, a: u32, n: u32, t: u32, trap: u64) -> [Instr; 6] {
        [
            Instr {
                c: t,
                ..Instr::new(Op::MemSize)
            },
            wide(Instr {
                imm: PAGE,
                c: t + 1,
                ..Instr::new(Op::Const)
            }),
            wide(ins(Op::Mul, t, t + 1, t)),
            wide(ins(Op::Add, a, n, t + 1)),
            wide(ins(Op::LtU, t, t + 1, t + 1)),
            Instr {
                a: t + 1,
                imm: top + trap,
                ..Instr::new(Op::BrNz)
            },
        ]
    }

    /// `read_input(dst, offset, len) -> n`, in lowered code. Frame: 0 dst, 1 offset, 2 len,
    /// 3 link, then 4 total, 5 n, 6 i, 7 t, 8 u, 9 one.
    fn read_input_helper(&mut self) {
        let top = self.code.len() as u64;
        let (check, lp, done, trap) = (9, 16, 24, 25);
        let mut code = vec![
            /* 0 */
            Instr {
                space: Space::Input,
                imm: 0,
                c: 4,
                ..Instr::new(Op::GetM)
            },
            /* 1 */
            Instr {
                imm: 1,
                c: 9,
                ..Instr::new(Op::Const)
            },
            /* 2 */
            Instr {
                c: 5,
                ..Instr::new(Op::Const)
            },
            /* 3 */ ins(Op::GeU, 1, 4, 7),
            /* 4: offset past the input, n = 0 */
            Instr {
                a: 7,
                imm: top + check,
                ..Instr::new(Op::BrNz)
            },
            /* 5 */ ins(Op::Sub, 4, 1, 5),
            /* 6 */ ins(Op::LtU, 2, 5, 7),
            /* 7 */
            Instr {
                a: 7,
                imm: top + check,
                ..Instr::new(Op::BrZ)
            },
            /* 8 */ ins(Op::Copy, 2, 0, 5),
        ];
        /* 9-14: the destination dst..dst+n inside memory */
        code.extend(Self::memory_range_check(top, 0, 5, 7, trap));
        code.extend([
            /* 15 */
            Instr {
                c: 6,
                ..Instr::new(Op::Const)
            },
            /* 16 loop */ ins(Op::LtU, 6, 5, 7),
            /* 17 */
            Instr {
                a: 7,
                imm: top + done,
                ..Instr::new(Op::BrZ)
            },
            /* 18: input byte index (offset + i < total < 2^31) */ ins(Op::Add, 1, 6, 7),
            /* 19 */
            Instr {
                space: Space::Input,
                a: 7,
                imm: WORD,
                c: 7,
                ..Instr::new(Op::Load)
            },
            /* 20: destination as a 64-bit sum, so it cannot wrap */
            Instr {
                wide: true,
                ..ins(Op::Add, 0, 6, 8)
            },
            /* 21 */
            Instr {
                space: Space::Memory,
                a: 8,
                b: 7,
                ..Instr::new(Op::Store)
            },
            /* 22 */ ins(Op::Add, 6, 9, 6),
            /* 23 */
            Instr {
                imm: top + lp,
                ..Instr::new(Op::Jump)
            },
            /* 24 done */
            Instr {
                a: 5,
                b: 3,
                c: 1,
                ..Instr::new(Op::Return)
            },
            /* 25 */
            Instr {
                imm: status::OUT_OF_BOUNDS,
                ..Instr::new(Op::Halt)
            },
        ]);
        debug_assert_eq!(code.len(), 26);
        self.code.extend(code);
    }

    /// `write_output(src, len)`, in lowered code. Frame: 0 src, 1 len, 2 link, then 3 position,
    /// 4 i, 5 t, 6 u, 7 one.
    fn write_output_helper(&mut self) {
        let top = self.code.len() as u64;
        let (lp, done, trap) = (9, 17, 20);
        /* 0-5: the source src..src+len inside memory */
        let mut code = Self::memory_range_check(top, 0, 1, 5, trap).to_vec();
        code.extend([
            /* 6 */
            Instr {
                space: Space::Globals,
                imm: GLOBAL_OUT_LEN,
                c: 3,
                ..Instr::new(Op::GetM)
            },
            /* 7 */
            Instr {
                imm: 1,
                c: 7,
                ..Instr::new(Op::Const)
            },
            /* 8 */
            Instr {
                c: 4,
                ..Instr::new(Op::Const)
            },
            /* 9 loop */ ins(Op::LtU, 4, 1, 5),
            /* 10 */
            Instr {
                a: 5,
                imm: top + done,
                ..Instr::new(Op::BrZ)
            },
            /* 11 */
            Instr {
                wide: true,
                ..ins(Op::Add, 0, 4, 5)
            },
            /* 12 */
            Instr {
                space: Space::Memory,
                a: 5,
                c: 5,
                ..Instr::new(Op::Load)
            },
            /* 13 */
            Instr {
                wide: true,
                ..ins(Op::Add, 3, 4, 6)
            },
            /* 14 */
            Instr {
                space: Space::Output,
                a: 6,
                b: 5,
                ..Instr::new(Op::Store)
            },
            /* 15 */ ins(Op::Add, 4, 7, 4),
            /* 16 */
            Instr {
                imm: top + lp,
                ..Instr::new(Op::Jump)
            },
            /* 17 done */
            Instr {
                wide: true,
                ..ins(Op::Add, 3, 1, 5)
            },
            /* 18 */
            Instr {
                space: Space::Globals,
                imm: GLOBAL_OUT_LEN,
                a: 5,
                ..Instr::new(Op::SetM)
            },
            /* 19 */
            Instr {
                b: 2,
                ..Instr::new(Op::Return)
            },
            /* 20 */
            Instr {
                imm: status::OUT_OF_BOUNDS,
                ..Instr::new(Op::Halt)
            },
        ]);
        debug_assert_eq!(code.len(), 21);
        self.code.extend(code);
    }
}

impl Lowerer {
    /// The memory limit before a `memory.grow` by slot `a`, as the mesh's runtime applies it:
    /// wasmtime asks the runtime's limiter before it looks at the module's maximum, and the
    /// limiter refuses any new size past the limit (even one past 2^16 pages, or past the
    /// maximum): the grow returns -1 (`MemGrow`'s bound is the lesser of the maximum and the
    /// limit) and [`GLOBAL_LIMIT_HIT`] is set, so a later trap ends out of memory
    /// ([`Lowerer::route_traps`]). `t` and `u` are free slots.
    fn grow_limit(&mut self, a: u32, t: u32, u: u32) {
        let ge = |x: u32, bound: u64, c: u32| Instr {
            a: x,
            imm_b: true,
            imm: bound,
            c,
            wide: true,
            ..Instr::new(Op::GeU)
        };
        // The delta is an i32: a narrow comparison range-checks it below 2^32 before the wide
        // sum below uses it.
        self.emit(Instr {
            a,
            imm_b: true,
            imm: 0,
            c: u,
            ..Instr::new(Op::GeU)
        });
        self.emit(Instr {
            c: t,
            ..Instr::new(Op::MemSize)
        });
        // ms < 2^14 and a < 2^32: the wide sum does not wrap.
        self.emit(Instr {
            a: t,
            b: a,
            c: t,
            wide: true,
            ..Instr::new(Op::Add)
        });
        self.emit(ge(t, self.mem_limit + 1, u));
        // The flag stays set once set: hit |= (size + delta > limit).
        self.emit(Instr {
            space: Space::Globals,
            imm: GLOBAL_LIMIT_HIT,
            c: t,
            ..Instr::new(Op::GetM)
        });
        self.emit(Instr {
            a: t,
            b: u,
            c: t,
            ..Instr::new(Op::Or)
        });
        self.emit(Instr {
            space: Space::Globals,
            imm: GLOBAL_LIMIT_HIT,
            a: t,
            ..Instr::new(Op::SetM)
        });
    }

    /// Every trap (a halt with a status other than [`status::OK`]) jumps to a handler of its
    /// status at the end of the code, which halts with [`status::OUT_OF_MEMORY`] if a grow
    /// past the memory limit was refused earlier ([`GLOBAL_LIMIT_HIT`]), and with the trap's own
    /// status otherwise: the runtime reports a run that traps after its limit refused memory
    /// as out of memory. A halt becomes a jump in place, so no other code moves. The handler
    /// reads the flag into slot 0 of the trapping frame, which nothing reads again.
    fn route_traps(&mut self) {
        let traps: std::collections::BTreeSet<u64> = self
            .code
            .iter()
            .filter(|i| i.op == Op::Halt && i.imm != status::OK)
            .map(|i| i.imm)
            .collect();
        let end = self.code.len();
        let mut handler = std::collections::BTreeMap::new();
        for trap in traps {
            let at = self.code.len() as u64;
            handler.insert(trap, at);
            self.emit(Instr {
                space: Space::Globals,
                imm: GLOBAL_LIMIT_HIT,
                c: 0,
                ..Instr::new(Op::GetM)
            });
            self.emit(Instr {
                a: 0,
                imm: at + 3,
                ..Instr::new(Op::BrZ)
            });
            self.emit(Instr {
                imm: status::OUT_OF_MEMORY,
                ..Instr::new(Op::Halt)
            });
            self.emit(Instr {
                imm: trap,
                ..Instr::new(Op::Halt)
            });
        }
        for i in &mut self.code[..end] {
            if i.op == Op::Halt && i.imm != status::OK {
                *i = Instr {
                    imm: handler[&i.imm],
                    ..Instr::new(Op::Jump)
                };
            }
        }
    }

    /// Halts with `status` unless the branch `skip` (`BrNz` or `BrZ`) on slot `cond` jumps over
    /// the halt.
    fn halt_unless(&mut self, skip: Op, cond: u32, status: u64) {
        let pc = self.code.len() as u64;
        self.emit(Instr {
            a: cond,
            imm: pc + 2,
            ..Instr::new(skip)
        });
        self.emit(Instr {
            imm: status,
            ..Instr::new(Op::Halt)
        });
    }

    /// Division and remainder. The circuit knows only unsigned division by a non-zero divisor,
    /// so the traps WebAssembly defines become explicit halts first (divide by zero; signed
    /// overflow for `div_s` of the most negative value by -1), and signed division works on
    /// magnitudes with the signs fixed up after. `x` and `y` are the operand slots (the result
    /// goes to `x`); slots from `t` on are free.
    fn division(
        &mut self,
        wide: bool,
        signed: bool,
        rem: bool,
        x: u32,
        y: u32,
        t: u32,
    ) -> Result<(), LowerError> {
        let _ = slot(t as usize + 5)?;
        let op = |op: Op, a: u32, b: u32, c: u32| Instr {
            a,
            b,
            c,
            wide,
            ..Instr::new(op)
        };
        let konst = |v: u64, c: u32| Instr {
            imm: v,
            c,
            wide,
            ..Instr::new(Op::Const)
        };
        let mask = if wide { u64::MAX } else { 0xffff_ffff };
        let bits = if wide { 64 } else { 32 };
        self.halt_unless(Op::BrNz, y, status::DIVIDE_BY_ZERO);
        let (q, r) = if rem {
            (Op::RemU, true)
        } else {
            (Op::DivU, false)
        };
        if !signed {
            self.emit(op(q, x, y, x));
            return Ok(());
        }
        let [t1, t2, t3, t4, t5] = [t, t + 1, t + 2, t + 3, t + 4];
        if !r {
            // x == MIN && y == -1 overflows
            self.emit(konst(1 << (bits - 1), t1));
            self.emit(op(Op::Eq, x, t1, t2));
            self.emit(konst(mask, t3));
            self.emit(op(Op::Eq, y, t3, t4));
            self.emit(op(Op::And, t2, t4, t2));
            self.halt_unless(Op::BrZ, t2, status::INTEGER_OVERFLOW);
        }
        // sx, sy: 0 or all ones; |v| = (v ^ s) - s
        self.emit(konst(bits - 1, t1));
        self.emit(op(Op::ShrS, x, t1, t2));
        self.emit(op(Op::ShrS, y, t1, t3));
        self.emit(op(Op::Xor, x, t2, t4));
        self.emit(op(Op::Sub, t4, t2, t4));
        self.emit(op(Op::Xor, y, t3, t5));
        self.emit(op(Op::Sub, t5, t3, t5));
        self.emit(op(q, t4, t5, t4));
        // the quotient is negative when the signs differ; the remainder takes the dividend's
        if !r {
            self.emit(op(Op::Xor, t2, t3, t2));
        }
        self.emit(op(Op::Xor, t4, t2, t4));
        self.emit(op(Op::Sub, t4, t2, x));
        Ok(())
    }

    /// The first steps of `memory.copy` and `memory.fill`: `size = memory.size * 65536` in slot 5,
    /// then a trap unless `slot 0 + slot 2 <= size` (and, with `second`, `slot 1 + slot 2 <= size`).
    /// `trap` is the helper-relative pc of its `Halt`.
    fn bounds_prelude(&self, top: u64, second: bool, trap: u64) -> Vec<Instr> {
        let mut code = Self::memory_range_check(top, 0, 2, 5, trap).to_vec();
        if second {
            code.extend([
                wide(ins(Op::Add, 1, 2, 6)),
                wide(ins(Op::LtU, 5, 6, 6)),
                Instr {
                    a: 6,
                    imm: top + trap,
                    ..Instr::new(Op::BrNz)
                },
            ]);
        }
        code
    }

    /// `memory.copy(dst, src, n)` as a byte loop, forwards or backwards as the overlap needs,
    /// after the bounds checks WebAssembly makes before copying anything. Frame: 0 dst, 1 src,
    /// 2 n, 3 link, 4 i, 5 t, 6 u, 7 one.
    fn mem_copy_helper(&mut self) {
        let top = self.code.len() as u64;
        let mut code = self.bounds_prelude(top, true, 30);
        code.extend([
            /* 9 */
            Instr {
                imm: 1,
                c: 7,
                ..Instr::new(Op::Const)
            },
            /* 10 */ ins(Op::LtU, 1, 0, 6),
            /* 11 */
            Instr {
                a: 6,
                imm: top + 21,
                ..Instr::new(Op::BrNz)
            },
            /* 12 */
            Instr {
                c: 4,
                ..Instr::new(Op::Const)
            },
            /* 13 fwd */ ins(Op::LtU, 4, 2, 6),
            /* 14 */
            Instr {
                a: 6,
                imm: top + 29,
                ..Instr::new(Op::BrZ)
            },
            /* 15 */ wide(ins(Op::Add, 1, 4, 6)),
            /* 16 */
            Instr {
                space: Space::Memory,
                a: 6,
                c: 5,
                ..Instr::new(Op::Load)
            },
            /* 17 */ wide(ins(Op::Add, 0, 4, 6)),
            /* 18 */
            Instr {
                space: Space::Memory,
                a: 6,
                b: 5,
                ..Instr::new(Op::Store)
            },
            /* 19 */ ins(Op::Add, 4, 7, 4),
            /* 20 */
            Instr {
                imm: top + 13,
                ..Instr::new(Op::Jump)
            },
            /* 21 back */ ins(Op::Copy, 2, 0, 4),
            /* 22 */
            Instr {
                a: 4,
                imm: top + 29,
                ..Instr::new(Op::BrZ)
            },
            /* 23 */ ins(Op::Sub, 4, 7, 4),
            /* 24 */ wide(ins(Op::Add, 1, 4, 6)),
            /* 25 */
            Instr {
                space: Space::Memory,
                a: 6,
                c: 5,
                ..Instr::new(Op::Load)
            },
            /* 26 */ wide(ins(Op::Add, 0, 4, 6)),
            /* 27 */
            Instr {
                space: Space::Memory,
                a: 6,
                b: 5,
                ..Instr::new(Op::Store)
            },
            /* 28 */
            Instr {
                imm: top + 22,
                ..Instr::new(Op::Jump)
            },
            /* 29 done */
            Instr {
                b: 3,
                ..Instr::new(Op::Return)
            },
            /* 30 */
            Instr {
                imm: status::OUT_OF_BOUNDS,
                ..Instr::new(Op::Halt)
            },
        ]);
        debug_assert_eq!(code.len(), 31);
        self.code.extend(code);
    }

    /// `memory.fill(dst, value, n)` after the bounds check: bytes up to the first 4-aligned
    /// address, then blocks of 32 bytes (four 8-byte stores), then whole 4-byte words, then the
    /// remaining bytes. Frame: 0 dst, 1 value, 2 n, 3 link, 4 p, 5 and 6 scratch, 7 end, 8 the
    /// word, 10 three, 11 one, 12 four, 13 255, 14 0x01010101, 15 thirty-two, 16 the 8-byte
    /// pattern.
    fn mem_fill_helper(&mut self) {
        let konst = |imm: u64, c: u32| Instr {
            imm,
            c,
            ..Instr::new(Op::Const)
        };
        let top = self.code.len() as u64;
        let (head, block, words, tail, done, trap) = (18, 25, 34, 40, 45, 46);
        let br = |op: Op, a: u32, to: u64| Instr {
            a,
            imm: top + to,
            ..Instr::new(op)
        };
        let jump = |to: u64| Instr {
            imm: top + to,
            ..Instr::new(Op::Jump)
        };
        let store = |width: u8, b: u32, imm: u64| Instr {
            space: Space::Memory,
            a: 4,
            b,
            width,
            imm,
            ..Instr::new(Op::Store)
        };
        let mut code = self.bounds_prelude(top, false, trap);
        code.extend([
            /* 6 */ ins(Op::Copy, 0, 0, 4),
            /* 7 */ wide(ins(Op::Add, 0, 2, 7)),
            /* 8 */ konst(255, 13),
            /* 9 */ ins(Op::And, 1, 13, 8),
            /* 10 */ konst(0x0101_0101, 14),
            /* 11 */ ins(Op::Mul, 8, 14, 8),
            /* 12 */ konst(3, 10),
            /* 13 */ konst(1, 11),
            /* 14 */ konst(4, 12),
            /* 15 */ konst(32, 15),
            /* 16 the byte in all eight bytes */ wide(ins(Op::Shl, 8, 15, 16)),
            /* 17 */ wide(ins(Op::Or, 16, 8, 16)),
            /* 18 head: bytes until p is 4-aligned */ wide(ins(Op::LtU, 4, 7, 6)),
            /* 19 */ br(Op::BrZ, 6, done),
            /* 20 */ wide(ins(Op::And, 4, 10, 6)),
            /* 21 */ br(Op::BrZ, 6, block),
            /* 22 */ store(0, 1, 0),
            /* 23 */ wide(ins(Op::Add, 4, 11, 4)),
            /* 24 */ jump(head),
            /* 25 block: while p + 32 <= end, four 8-byte stores */
            wide(ins(Op::Add, 4, 15, 6)),
            /* 26 */ wide(ins(Op::LtU, 7, 6, 6)),
            /* 27 */ br(Op::BrNz, 6, words),
            /* 28 */ store(3, 16, 0),
            /* 29 */ store(3, 16, 8),
            /* 30 */ store(3, 16, 16),
            /* 31 */ store(3, 16, 24),
            /* 32 */ wide(ins(Op::Add, 4, 15, 4)),
            /* 33 */ jump(block),
            /* 34 words: while p + 4 <= end */ wide(ins(Op::Add, 4, 12, 6)),
            /* 35 */ wide(ins(Op::LtU, 7, 6, 6)),
            /* 36 */ br(Op::BrNz, 6, tail),
            /* 37 */ store(2, 8, 0),
            /* 38 */ wide(ins(Op::Add, 4, 12, 4)),
            /* 39 */ jump(words),
            /* 40 tail */ wide(ins(Op::LtU, 4, 7, 6)),
            /* 41 */ br(Op::BrZ, 6, done),
            /* 42 */ store(0, 1, 0),
            /* 43 */ wide(ins(Op::Add, 4, 11, 4)),
            /* 44 */ jump(tail),
            /* 45 done */
            Instr {
                b: 3,
                ..Instr::new(Op::Return)
            },
            /* 46 */
            Instr {
                imm: status::OUT_OF_BOUNDS,
                ..Instr::new(Op::Halt)
            },
        ]);
        debug_assert_eq!(code.len(), 47);
        self.code.extend(code);
    }
}

/// `op` with operand slots `a`, `b` and result slot `c` (for the hand-written helpers).
fn ins(op: Op, a: u32, b: u32, c: u32) -> Instr {
    Instr {
        a,
        b,
        c,
        ..Instr::new(op)
    }
}

/// The same instruction on 64-bit values.
fn wide(x: Instr) -> Instr {
    Instr { wide: true, ..x }
}

/// The initial memory as one window of words: every byte of every active data segment, with
/// zeros in the gaps. Later segments overwrite earlier ones, as instantiation does.
fn data_words(data: &[(u64, &[u8])], pages: u64) -> Result<(u64, Vec<u64>), LowerError> {
    // Instantiation checks every segment, empty ones included.
    if data.iter().any(|(o, d)| o + d.len() as u64 > pages * PAGE) {
        return Err(LowerError::Invalid("data segment out of bounds".into()));
    }
    let nonempty = data.iter().filter(|(_, d)| !d.is_empty());
    let (Some(lo), Some(hi)) = (
        nonempty.clone().map(|(o, _)| *o).min(),
        nonempty.map(|(o, d)| o + d.len() as u64).max(),
    ) else {
        return Ok((0, vec![]));
    };
    let (first, last) = (lo / WORD, hi.div_ceil(WORD));
    let mut bytes = vec![0u8; ((last - first) * WORD) as usize];
    for (offset, d) in data.iter().filter(|(_, d)| !d.is_empty()) {
        let at = (offset - first * WORD) as usize;
        bytes[at..at + d.len()].copy_from_slice(d);
    }
    let words = bytes
        .chunks_exact(WORD as usize)
        .map(|c| u32::from_le_bytes(c.try_into().expect("a word")) as u64)
        .collect();
    Ok((first, words))
}

//! Expressions in dataflow files: validation rules (`expr`), window filters (`filter`),
//! the input filter and computed window values (`value`), written in CEL, the Common
//! Expression Language (<https://cel.dev>).
//!
//! Each expression is compiled once, when the dataflow file is read; a syntax error, a
//! reference to a field not declared in `[validation.fields]`, or an operator applied to
//! types it has no overload for is a start-up error naming the setting
//! (`validation.rules[2].expr: ...`). Fields are the only variables; each appears under
//! its declared name with a CEL type:
//!
//! | declared    | CEL      | note |
//! |-------------|----------|------|
//! | `string`    | `string` | |
//! | `integer`   | `int`    | |
//! | `bool`      | `bool`   | |
//! | `timestamp` | `int`    | epoch milliseconds |
//! | `decimal`   | `double` | for comparison only, see below |
//!
//! **Decimals.** CEL has no decimal type. A decimal field appears as the nearest `double`,
//! which is exact for integers up to 2^53 and for most values written with few digits, but
//! not in general: `0.1 + 0.2 == 0.3` is false in CEL as everywhere binary floats are, and
//! a value within about 10^-15 of a rule's bound may compare on the wrong side of it.
//! Exact bounds on money belong in the `gt`/`ge`/`lt`/`le` rules, which compare decimals
//! exactly. Aggregates never go through CEL: `sum`, `min`, `max` and `avg` of a decimal
//! `field` stay exact, and a `value` expression must return `int`, `uint` or `bool`
//! (`true` = 1), which convert to decimals exactly; a `double` result is refused.
//!
//! **Determinism.** The output must be a function of the input alone, so the interpreter
//! is built without its time functions (no `timestamp()`, `duration()` or time zones) and
//! CEL has no clock, randomness or I/O. An expression evaluates to the same value on every
//! worker, in every process and on every replay. One caveat: CEL maps are unordered, so a
//! comprehension over the keys of a map literal (`{'a': 1, 'b': 2}.map(k, k)`) may list
//! them in either order; no field is a map, so this needs a map written in the expression.
//!
//! **Why CEL, and why the `cel` crate.** Rules and filters are written by people who
//! configure pipelines, not by programmers of this code base, and run once per record. CEL
//! is made for exactly that: a small, standard (Kubernetes admission policies, Envoy, Google
//! IAM), side-effect-free, non-Turing-complete language whose cost is bounded by the
//! expression's size, with a precise specification of its types and their errors. The
//! alternatives weighed: general embedded scripting languages (Rhai, Lua) allow loops,
//! state and unbounded run time per record and need sandboxing to be safe; small
//! expression crates (evalexpr and the like) have their own non-standard syntax and
//! looser typing (implicit int/float mixing). `cel` (0.15, repository `cel-rust/cel-rust`)
//! is the maintained successor of `cel-interpreter`, which it replaced on crates.io; it
//! parses to an AST once, at start-up, and walks it per record. It has no static type
//! checker, so types are checked here by evaluating each expression once at start-up on a
//! probe record (each field's zero value), which catches operators applied to the wrong
//! types; anything that only fails for some values (division by zero, overflow) is a
//! per-record error.
//!
//! **Cost.** Each evaluation walks the AST with the record's fields bound as variables;
//! `benches/expr.rs` measures it against the same decode without expressions. One trap:
//! this interpreter compiles the regular expression of `matches()` on every call, which
//! makes a rule using it cost tens of times a whole decode; a rule's `pattern` is compiled
//! once, at start-up, and is the way to check a field against a regular expression.
//!
//! **Errors per record.** A rule that evaluates to false, or fails to evaluate, makes the
//! record a dead letter (`rule_violation`) whose reason names the rule. A filter or value
//! expression that fails to evaluate does too (kind `rule_violation`, reason naming the
//! window's setting), so a broken expression is visible rather than silently skipping.

use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr};
use cel::{Context, Env, ExecutionError, Program, Value};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::spec::{FieldSpec, FieldType};

/// A field's value as an expression sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg<'a> {
    /// A string field.
    Str(&'a str),
    /// A decimal field (seen as a double).
    Decimal(Decimal),
    /// An integer field.
    Int(i64),
    /// A boolean field.
    Bool(bool),
    /// A timestamp field, epoch milliseconds (seen as an int).
    Time(u64),
}

/// What an expression must evaluate to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returns {
    /// A condition: `bool`.
    Bool,
    /// A window value: `int`, `uint` or `bool` (as 0/1).
    Number,
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<Program>,
    env: Arc<Env>,
    /// Referenced fields: (index into the declared fields, name), in index order.
    vars: Vec<(usize, String)>,
    returns: Returns,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("source", &self.source)
            .field("returns", &self.returns)
            .finish()
    }
}

/// CEL's name of a value's type.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Null => "null",
        _ => "a value of another type",
    }
}

/// The identifiers `e` reads that no comprehension around them binds: the variables it
/// needs from outside.
fn free_variables<'e>(e: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<&'e str>) {
    match &e.expr {
        Node::Ident(name) => {
            if !name.starts_with('@')
                && !bound.contains(&name.as_str())
                && !out.contains(&name.as_str())
            {
                out.push(name);
            }
        }
        Node::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, out);
            }
            for arg in &call.args {
                free_variables(arg, bound, out);
            }
        }
        Node::Comprehension(c) => {
            free_variables(&c.iter_range, bound, out);
            free_variables(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                bound.push(v);
            }
            bound.push(&c.accu_var);
            free_variables(&c.loop_cond, bound, out);
            free_variables(&c.loop_step, bound, out);
            free_variables(&c.result, bound, out);
            bound.truncate(depth);
        }
        Node::List(list) => {
            for elem in &list.elements {
                free_variables(elem, bound, out);
            }
        }
        Node::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => free_variables(&f.value, bound, out),
                    EntryExpr::MapEntry(m) => {
                        free_variables(&m.key, bound, out);
                        free_variables(&m.value, bound, out);
                    }
                }
            }
        }
        Node::Struct(st) => {
            for entry in &st.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => free_variables(&f.value, bound, out),
                    EntryExpr::MapEntry(m) => {
                        free_variables(&m.key, bound, out);
                        free_variables(&m.value, bound, out);
                    }
                }
            }
        }
        Node::Select(select) => free_variables(&select.operand, bound, out),
        Node::Literal(_) | Node::Unspecified => {}
    }
}

impl Expr {
    /// Compiles `source` for records with `fields`, checking that it refers to declared
    /// fields only and that it evaluates to the right type on a probe record. The error
    /// is a sentence for the person who wrote the file.
    pub fn compile(source: &str, fields: &[FieldSpec], returns: Returns) -> Result<Expr, String> {
        let env = Arc::new(Env::stdlib());
        let program = env.compile(source).map_err(|e| {
            let text = e.to_string().replace('\n', " ");
            format!("not a valid CEL expression: {text}")
        })?;
        let mut free = Vec::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        let mut unknown: Vec<&str> = Vec::new();
        let mut vars: Vec<(usize, String)> = Vec::new();
        for name in free {
            match fields.iter().position(|f| f.name == name) {
                Some(i) => vars.push((i, name.to_string())),
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let list: Vec<String> = unknown.iter().map(|u| format!("`{u}`")).collect();
            return Err(format!(
                "refers to {} not declared in [validation.fields]",
                list.join(", ")
            ));
        }
        vars.sort_unstable();
        let expr = Expr {
            source: source.to_string(),
            program: Arc::new(program),
            env,
            vars,
            returns,
        };
        // No static type checker: run it once on each field's zero value.
        let probe = |i: usize| match fields[i].ty {
            FieldType::String => Arg::Str(""),
            FieldType::Decimal => Arg::Decimal(Decimal::ZERO),
            FieldType::Integer => Arg::Int(0),
            FieldType::Bool => Arg::Bool(false),
            FieldType::Timestamp => Arg::Time(0),
        };
        match expr.run(&probe) {
            Ok(v) => expr.convert(&v).map(|_| ()).map_err(|e| e.to_string())?,
            Err(
                e @ (ExecutionError::NoSuchOverload(_)
                | ExecutionError::UndeclaredReference(_)
                | ExecutionError::UnexpectedType { .. }
                | ExecutionError::NotSupportedAsMethod { .. }
                | ExecutionError::InvalidArgumentCount { .. }),
            ) => return Err(format!("type error: {e}")),
            Err(_) => {} // depends on the values (division by zero, ...)
        }
        Ok(expr)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Indices of the declared fields the expression reads.
    pub fn fields(&self) -> impl Iterator<Item = usize> + '_ {
        self.vars.iter().map(|(i, _)| *i)
    }

    fn run<'a>(&self, arg: &dyn Fn(usize) -> Arg<'a>) -> Result<Value, ExecutionError> {
        let mut context = Context::with_env(self.env.clone());
        for (i, name) in &self.vars {
            let value = match arg(*i) {
                Arg::Str(s) => Value::String(Arc::new(s.to_string())),
                // Decimals within ±10^18 always have a nearest double.
                Arg::Decimal(d) => Value::Float(d.to_f64().unwrap_or(f64::NAN)),
                Arg::Int(n) => Value::Int(n),
                Arg::Bool(b) => Value::Bool(b),
                Arg::Time(t) => Value::Int(i64::try_from(t).unwrap_or(i64::MAX)),
            };
            context.add_variable_from_value(name.as_str(), value);
        }
        self.program.execute(&context)
    }

    fn convert(&self, v: &Value) -> Result<Outcome, EvalError> {
        match (self.returns, v) {
            (Returns::Bool, Value::Bool(b)) => Ok(Outcome::Bool(*b)),
            (Returns::Number, Value::Bool(b)) => Ok(Outcome::Number(Decimal::from(u8::from(*b)))),
            (Returns::Number, Value::Int(n)) => Ok(Outcome::Number(Decimal::from(*n))),
            (Returns::Number, Value::UInt(n)) => Ok(Outcome::Number(Decimal::from(*n))),
            (Returns::Bool, other) => Err(EvalError(format!(
                "evaluates to {}, not bool",
                type_name(other)
            ))),
            (Returns::Number, other) => Err(EvalError(format!(
                "evaluates to {}, not int, uint or bool (values must stay exact)",
                type_name(other)
            ))),
        }
    }

    /// Evaluates a condition on a record whose field `i` is `arg(i)`.
    pub fn test<'a>(&self, arg: &dyn Fn(usize) -> Arg<'a>) -> Result<bool, EvalError> {
        let v = self.run(arg).map_err(|e| EvalError(e.to_string()))?;
        match self.convert(&v)? {
            Outcome::Bool(b) => Ok(b),
            Outcome::Number(_) => unreachable!("a condition converts to a bool"),
        }
    }

    /// Evaluates a value expression on a record whose field `i` is `arg(i)`.
    pub fn number<'a>(&self, arg: &dyn Fn(usize) -> Arg<'a>) -> Result<Decimal, EvalError> {
        let v = self.run(arg).map_err(|e| EvalError(e.to_string()))?;
        match self.convert(&v)? {
            Outcome::Number(n) => Ok(n),
            Outcome::Bool(_) => unreachable!("a value expression converts to a number"),
        }
    }
}

enum Outcome {
    Bool(bool),
    Number(Decimal),
}

/// Why an expression could not be evaluated on a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<FieldSpec> {
        [
            ("page", FieldType::String),
            ("amount", FieldType::Decimal),
            ("n", FieldType::Integer),
            ("ok", FieldType::Bool),
            ("ts", FieldType::Timestamp),
        ]
        .into_iter()
        .map(|(name, ty)| FieldSpec {
            name: name.to_string(),
            ty,
        })
        .collect()
    }

    fn record(i: usize) -> Arg<'static> {
        match i {
            0 => Arg::Str("/checkout"),
            1 => Arg::Decimal(Decimal::new(1250, 2)),
            2 => Arg::Int(7),
            3 => Arg::Bool(true),
            _ => Arg::Time(1_700_000_000_000),
        }
    }

    fn cond(src: &str) -> Expr {
        Expr::compile(src, &fields(), Returns::Bool).expect("compiles")
    }

    #[test]
    fn conditions_evaluate_on_declared_fields() {
        assert_eq!(
            cond("page.startsWith('/check') && n > 5").test(&record),
            Ok(true)
        );
        assert_eq!(cond("amount > 12.5").test(&record), Ok(false));
        assert_eq!(cond("amount >= 12.5 && ok").test(&record), Ok(true));
        assert_eq!(cond("ts >= 1700000000000").test(&record), Ok(true));
        assert_eq!(cond("page in ['/a', '/b']").test(&record), Ok(false));
        assert_eq!(cond("page.matches('^/[a-z]+$')").test(&record), Ok(true));
        assert_eq!(cond("[1, 2, 3].exists(x, x == n)").test(&record), Ok(false));
        assert_eq!(cond("[5, 7].all(n2, n2 <= n)").test(&record), Ok(true));
        let e = Expr::compile("[1].exists(x, x == y)", &fields(), Returns::Bool)
            .expect_err("y is bound by no comprehension");
        assert!(e.contains("`y` not declared"), "{e}");
        let e = cond("n > 0");
        assert_eq!(e.fields().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn syntax_errors_and_unknown_fields_fail_to_compile() {
        let e = Expr::compile("n >", &fields(), Returns::Bool).expect_err("syntax");
        assert!(e.contains("not a valid CEL expression"), "{e}");
        let e = Expr::compile("size(pge) > 0 && colour == 'x'", &fields(), Returns::Bool)
            .expect_err("unknown");
        assert!(e.contains("`colour`, `pge` not declared"), "{e}");
    }

    #[test]
    fn type_errors_are_found_at_compile_time() {
        let e = Expr::compile("page > 3", &fields(), Returns::Bool).expect_err("string > int");
        assert!(e.contains("type error"), "{e}");
        let e = Expr::compile("n + 1", &fields(), Returns::Bool).expect_err("not a bool");
        assert!(e.contains("evaluates to int, not bool"), "{e}");
        let e = Expr::compile("amount * 2.0", &fields(), Returns::Number).expect_err("double");
        assert!(e.contains("not int, uint or bool"), "{e}");
        let e = Expr::compile("now() > 0", &fields(), Returns::Bool).expect_err("no clock");
        assert!(e.contains("type error"), "{e}");
        let e = Expr::compile(
            "timestamp('2024-01-01T00:00:00Z') == ts",
            &fields(),
            Returns::Bool,
        )
        .expect_err("no time functions");
        assert!(e.contains("type error"), "{e}");
    }

    #[test]
    fn values_are_exact_integers_or_booleans() {
        let v = |src: &str| {
            Expr::compile(src, &fields(), Returns::Number)
                .expect("compiles")
                .number(&record)
        };
        assert_eq!(v("page == '/checkout'"), Ok(Decimal::ONE));
        assert_eq!(v("page == '/home'"), Ok(Decimal::ZERO));
        assert_eq!(v("n * 3"), Ok(Decimal::from(21)));
        assert_eq!(v("uint(n)"), Ok(Decimal::from(7)));
    }

    #[test]
    fn evaluation_errors_depend_on_the_values() {
        let e = Expr::compile("10 / n >= 1", &fields(), Returns::Bool).expect("compiles");
        assert_eq!(e.test(&record), Ok(true));
        let zero = |i| if i == 2 { Arg::Int(0) } else { record(i) };
        assert!(e.test(&zero).is_err(), "division by zero");
    }
}

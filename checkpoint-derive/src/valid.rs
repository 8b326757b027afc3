//! Checks the signatures of `consume` and the extractors, and turns the impl block into the
//! [`Handler`] model the expansion trusts.

use proc_macro2::Ident;
use quote::ToTokens;
use syn::{ReturnType, Signature, Type};

use crate::args::{Args, NAME};
use crate::ast::{self, CONSUME, CONSUME_BATCH, Extractor, ExtractorFn, Input, PayloadKind};
use crate::ctxt::Ctxt;

/// A handler whose every part was checked.
pub(crate) struct Handler<'a> {
    pub(crate) self_ty: &'a Type,
    pub(crate) name: String,
    pub(crate) max_retries: Option<u32>,
    pub(crate) transactional: bool,
    pub(crate) consume: Consume<'a>,
    pub(crate) consume_batch: Option<Consume<'a>>,
    pub(crate) extractors: Vec<ExtractorSig<'a>>,
}

/// The user's `consume` fn, or its `consume_batch` fn.
pub(crate) struct Consume<'a> {
    pub(crate) sig: &'a Signature,
    /// The payload type (for `consume_batch`, the `T` of its `Vec<T>` parameter).
    pub(crate) payload: &'a Type,
    pub(crate) payload_kind: PayloadKind,
    pub(crate) takes_ctx: bool,
    pub(crate) output: &'a Type,
}

/// A user's extractor fn.
pub(crate) struct ExtractorSig<'a> {
    pub(crate) kind: Extractor,
    pub(crate) ident: &'a Ident,
    pub(crate) takes_self: bool,
    /// The parameter types after the optional `&self`, `kind.arity()` of them.
    pub(crate) params: Vec<&'a Type>,
    pub(crate) output: &'a Type,
}

/// The name the handler is registered under: `name = "…"`, else the type's name.
pub(crate) fn handler_name(args: &Args, self_ty: &Type) -> Option<String> {
    match &args.name {
        Some(name) => Some(name.value()),
        None => ast::type_name(self_ty),
    }
}

/// Checks `input`, recording every mistake; `None` when there was one.
pub(crate) fn validate<'a>(cx: &Ctxt, args: &Args, input: &Input<'a>) -> Option<Handler<'a>> {
    let self_ty = &*input.item.self_ty;
    let name = handler_name(args, self_ty);
    if name.is_none() {
        cx.error_spanned_by(
            self_ty,
            format_args!(
                "this type has no name to register the handler under: add `{NAME} = \"…\"`"
            ),
        );
    }
    let consume = match input.consume {
        Some(func) => check_consume(cx, &func.sig, &Form::consume()),
        None => {
            cx.error_spanned_by(
                self_ty,
                format_args!(
                    "missing `{CONSUME}` fn: a `#[checkpoint_handler]` impl handles messages in \
                     `async fn {CONSUME}(&self, payload: T, ctx: &mut Context<'_>) -> \
                     Result<Outcome, E>` (`ctx` is optional; a plain `fn` works too)"
                ),
            );
            None
        }
    };
    let consume_batch = input
        .consume_batch
        .map(|func| check_consume(cx, &func.sig, &Form::consume_batch(args.transactional)));
    let extractors: Vec<_> = input
        .extractors
        .iter()
        .map(|extractor| check_extractor(cx, extractor))
        .collect();
    Some(Handler {
        self_ty,
        name: name?,
        max_retries: args.max_retries,
        transactional: args.transactional,
        consume: consume?,
        consume_batch: consume_batch.map_or(Some(None), |checked| checked.map(Some))?,
        extractors: extractors.into_iter().collect::<Option<_>>()?,
    })
}

/// What differs between checking `consume` and `consume_batch`: whether the handler may have
/// the fn, where the payload type is found, which context type is accepted, and the words of
/// each error.
struct Form {
    /// The fn's name, for errors.
    name: &'static str,
    /// Why the handler may not have this fn at all (`consume_batch` on a handler that is not
    /// transactional), reported after the checks every fn gets.
    misplaced: Option<String>,
    /// The payload type of the first parameter after `&self`: the parameter's own type for
    /// `consume`, the `T` of its `Vec<T>` for `consume_batch` (`None`: not a `Vec`).
    payload: for<'t> fn(&'t Type) -> Option<&'t Type>,
    /// Whether a type is the context this fn takes second.
    is_context: fn(&Type) -> bool,
    /// The receiver is not `&self`.
    wrong_receiver: String,
    /// There is no receiver.
    missing_receiver: String,
    /// There is no parameter after `&self`.
    missing_payload: String,
    /// The first parameter has no payload type: `consume_batch`'s is not a `Vec<T>` (`consume`
    /// takes any type).
    not_payloads: String,
    /// The payload is a reference that cannot be decoded.
    borrowed: &'static str,
    /// The second parameter is not the context.
    wrong_context: String,
    /// A third parameter.
    extra: String,
    /// No return type.
    no_output: String,
}

impl Form {
    /// `consume`.
    fn consume() -> Self {
        let payload = format!(
            "`{CONSUME}` takes the payload after `&self`: `fn {CONSUME}(&self, payload: T, …)`"
        );
        Self {
            name: CONSUME,
            misplaced: None,
            payload: |ty| Some(ty),
            is_context: ast::is_context,
            wrong_receiver: format!("`{CONSUME}` takes `&self`"),
            missing_receiver: format!("`{CONSUME}` takes `&self` as its first parameter"),
            missing_payload: payload.clone(),
            not_payloads: payload,
            borrowed: "take the payload by value (any `T: Deserialize`), or borrow the message \
                       as `&[u8]` or `&str`; other references cannot be decoded from a message",
            wrong_context: format!(
                "the second parameter of `{CONSUME}` is the context: `ctx: &mut Context<'_>`"
            ),
            extra: format!(
                "`{CONSUME}` takes at most two parameters after `&self`: the payload and `ctx: \
                 &mut Context<'_>`"
            ),
            no_output: format!("`{CONSUME}` must return `Outcome` or `Result<Outcome, E>`"),
        }
    }

    /// `consume_batch` of a handler that is `transactional` or not.
    fn consume_batch(transactional: bool) -> Self {
        let first = format!("`{CONSUME_BATCH}` takes `&self` first: {BATCH_SIGNATURE}");
        Self {
            name: CONSUME_BATCH,
            misplaced: (!transactional).then(|| {
                format!(
                    "`{CONSUME_BATCH}` runs inside a batch's checkpoint transaction: declare the \
                     handler `#[checkpoint_handler(transactional)]`"
                )
            }),
            payload: ast::vec_element,
            is_context: ast::is_batch_context,
            wrong_receiver: first.clone(),
            missing_receiver: first,
            missing_payload: format!(
                "`{CONSUME_BATCH}` takes the payloads after `&self`: {BATCH_SIGNATURE}"
            ),
            not_payloads: format!("the payloads of a batch come as a `Vec<T>`: {BATCH_SIGNATURE}"),
            borrowed: "take the payloads by value (any `T: Deserialize`), or borrow them as \
                       `&[u8]` or `&str`; other references cannot be decoded from a message",
            wrong_context: format!(
                "the second parameter of `{CONSUME_BATCH}` is the batch's context: `ctx: &mut \
                 BatchContext<'_>`"
            ),
            extra: format!(
                "`{CONSUME_BATCH}` takes at most two parameters after `&self`: {BATCH_SIGNATURE}"
            ),
            no_output: format!(
                "`{CONSUME_BATCH}` must return `Vec<Outcome>` or `Result<Vec<Outcome>, E>`, one \
                 outcome per payload"
            ),
        }
    }
}

/// The signature `consume_batch` must have, for its errors.
const BATCH_SIGNATURE: &str = "`async fn consume_batch(&self, payloads: Vec<T>, ctx: &mut \
                               BatchContext<'_>) -> Result<Vec<Outcome>, E>`";

/// Checks the signature of `consume`, or of `consume_batch` (`form` says which), recording
/// every mistake.
fn check_consume<'a>(cx: &Ctxt, sig: &'a Signature, form: &Form) -> Option<Consume<'a>> {
    let mut ok = check_plain_fn(cx, sig, &format!("`{}`", form.name));
    if let Some(misplaced) = &form.misplaced {
        cx.error_spanned_by(&sig.ident, misplaced);
        ok = false;
    }
    let (receiver, params) = ast::params(sig);
    match receiver {
        Some(receiver) if ast::is_ref_self(receiver) => {}
        Some(receiver) => {
            cx.error_spanned_by(receiver, &form.wrong_receiver);
            ok = false;
        }
        None => {
            cx.error_spanned_by(inputs_or_ident(sig), &form.missing_receiver);
            ok = false;
        }
    }

    let payload = params.first().and_then(|param| (form.payload)(&param.ty));
    let payload_kind = payload.map(ast::payload_kind);
    match (params.first(), payload) {
        (None, _) => {
            cx.error_spanned_by(&sig.ident, &form.missing_payload);
            ok = false;
        }
        (Some(param), None) => {
            cx.error_spanned_by(&param.ty, &form.not_payloads);
            ok = false;
        }
        (Some(_), Some(ty)) if payload_kind == Some(PayloadKind::Borrowed) => {
            cx.error_spanned_by(ty, form.borrowed);
            ok = false;
        }
        (Some(_), Some(_)) => {}
    }
    if let Some(ctx) = params.get(1)
        && !(form.is_context)(&ctx.ty)
    {
        cx.error_spanned_by(&ctx.ty, &form.wrong_context);
        ok = false;
    }
    if let Some(extra) = params.get(2) {
        cx.error_spanned_by(extra, &form.extra);
        ok = false;
    }

    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            cx.error_at(sig.paren_token.span.close(), &form.no_output);
            None
        }
    };
    if !ok {
        return None;
    }
    Some(Consume {
        sig,
        payload: payload?,
        payload_kind: payload_kind?,
        takes_ctx: params.len() == 2,
        output: output?,
    })
}

fn check_extractor<'a>(cx: &Ctxt, extractor: &ExtractorFn<'a>) -> Option<ExtractorSig<'a>> {
    let kind = extractor.kind;
    let sig = &extractor.func.sig;
    let attr = format!("`#[{}]` fn", kind.name());
    let expected = format!(
        "a {attr} has the signature `{}`, where `T` is the payload type of `{CONSUME}` (`&self` \
         may come first)",
        kind.signature()
    );
    let mut ok = check_plain_fn(cx, sig, &attr);
    if let Some(asyncness) = &sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            format_args!("an extractor is a plain fn; {expected}"),
        );
        ok = false;
    }
    let (receiver, params) = ast::params(sig);
    let takes_self = receiver.is_some();
    if let Some(receiver) = receiver.filter(|r| !ast::is_ref_self(r)) {
        cx.error_spanned_by(
            receiver,
            format_args!("an extractor takes `&self` or no receiver; {expected}"),
        );
        ok = false;
    }
    if params.len() != kind.arity() {
        let found = params.len();
        cx.error_spanned_by(
            inputs_or_ident(sig),
            format_args!(
                "{expected}; this one takes {found} parameter{}",
                if found == 1 { "" } else { "s" }
            ),
        );
        ok = false;
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            cx.error_at(sig.paren_token.span.close(), &expected);
            None
        }
    };
    if !ok {
        return None;
    }
    Some(ExtractorSig {
        kind,
        ident: &sig.ident,
        takes_self,
        params: params.iter().map(|param| &*param.ty).collect(),
        output: output?,
    })
}

/// Generic and `unsafe` fns cannot be called from the generated impl.
fn check_plain_fn(cx: &Ctxt, sig: &Signature, what: &str) -> bool {
    let mut ok = true;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(&sig.generics, format_args!("{what} cannot be generic"));
        ok = false;
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(unsafety, format_args!("{what} cannot be `unsafe`"));
        ok = false;
    }
    ok
}

/// The parameter list, or the fn's name when it has none.
fn inputs_or_ident(sig: &Signature) -> proc_macro2::TokenStream {
    if sig.inputs.is_empty() {
        sig.ident.to_token_stream()
    } else {
        sig.inputs.to_token_stream()
    }
}

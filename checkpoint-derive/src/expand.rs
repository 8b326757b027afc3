//! Code generation: the user's impl block, then `impl checkpoint::Handler` made of constants and
//! thin forwarding fns. Everything the generated code names goes through
//! `::checkpoint::__private`, so it survives a user's shadowed `Result`, `Option`, `Box`, …

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::Item;
use syn::spanned::Spanned;

use crate::args;
use crate::ast::{self, Extractor, Input, PayloadKind};
use crate::ctxt::Ctxt;
use crate::valid::{self, Consume, ExtractorSig, Handler};

/// `#[checkpoint_handler(args)] item`, expanded; compiler-free so unit tests can call it.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    let args = args::parse(&cx, args);
    let item_impl = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(item_impl)) => item_impl,
        Ok(other) => {
            cx.error_spanned_by(
                ast::not_an_impl_span(&other),
                "`#[checkpoint_handler]` goes on an `impl YourHandler { … }` block that holds \
                 `consume` and the extractor fns",
            );
            return with_errors(cx, item);
        }
        Err(error) => {
            cx.syn_error(error);
            return with_errors(cx, item);
        }
    };

    let emitted = ast::emitted_impl(&item_impl);
    let Some(input) = Input::from_impl(&cx, &item_impl) else {
        return with_errors(cx, quote!(#emitted));
    };
    let handler = valid::validate(&cx, &args, &input);
    match (cx.check(), handler) {
        (Ok(()), Some(handler)) => {
            let handler_impl = implement(&handler);
            quote!(#emitted #handler_impl)
        }
        (checked, _) => {
            // The user's items stay, so one mistake does not cascade into "no such method"
            // errors; they may look unused next to the stub.
            let errors = checked.err().map(syn::Error::into_compile_error);
            let stub = input.can_implement.then(|| {
                let name = valid::handler_name(&args, &item_impl.self_ty).unwrap_or_default();
                stub(&item_impl.self_ty, &name)
            });
            quote! {
                #errors
                #[allow(dead_code)]
                #emitted
                #stub
            }
        }
    }
}

/// A helper attribute (`#[entity_id]`, …) outside a `#[checkpoint_handler]` impl block.
pub(crate) fn helper_outside_handler(kind: Extractor, item: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        format_args!(
            "`#[{}]` must be used inside a `#[checkpoint_handler]` impl block",
            kind.name()
        ),
    )
    .into_compile_error();
    quote!(#error #item)
}

fn with_errors(cx: Ctxt, item: TokenStream) -> TokenStream {
    let errors = cx.check().err().map(syn::Error::into_compile_error);
    quote!(#errors #item)
}

/// `impl Handler for T { … }` of a checked handler.
fn implement(handler: &Handler) -> TokenStream {
    let name = &handler.name;
    let max_retries = handler.max_retries.map(|max_retries| {
        quote! {
            fn max_retries(&self) -> ::checkpoint::__private::Option<u32> {
                ::checkpoint::__private::Option::Some(#max_retries)
            }
        }
    });
    let transactional = handler.transactional.then(|| {
        quote! {
            fn transactional(&self) -> bool {
                true
            }
        }
    });
    let consume = consume_fn(&handler.consume);
    let consume_batch = handler.consume_batch.as_ref().map(consume_batch_fn);
    let extractors = handler
        .extractors
        .iter()
        .map(|extractor| extractor_fn(&handler.consume, extractor));
    handler_impl(
        handler.self_ty,
        quote! {
            fn name(&self) -> &str {
                #name
            }
            #max_retries
            #transactional
            #consume
            #consume_batch
            #(#extractors)*
        },
    )
}

/// The stub emitted next to compile errors: keeps `T: Handler` true so uses of the handler
/// elsewhere do not pile up follow-on errors.
fn stub(self_ty: &syn::Type, name: &str) -> TokenStream {
    let signature = consume_signature();
    handler_impl(
        self_ty,
        quote! {
            fn name(&self) -> &str {
                #name
            }
            #signature {
                ::checkpoint::__private::invalid_handler()
            }
        },
    )
}

fn handler_impl(self_ty: &syn::Type, items: TokenStream) -> TokenStream {
    quote! {
        const _: () = {
            #[automatically_derived]
            impl ::checkpoint::__private::Handler for #self_ty {
                #items
            }
        };
    }
}

fn consume_signature() -> TokenStream {
    quote! {
        fn consume<'__checkpoint>(
            &'__checkpoint self,
            __checkpoint_message: &'__checkpoint ::checkpoint::__private::Message,
            __checkpoint_ctx: &'__checkpoint mut ::checkpoint::__private::Context<'_>,
        ) -> ::checkpoint::__private::BoxFuture<
            '__checkpoint,
            ::checkpoint::__private::Result<
                ::checkpoint::__private::Outcome,
                ::checkpoint::__private::HandlerError,
            >,
        >
    }
}

/// Decodes `__checkpoint_message`'s payload into `consume`'s payload type; spanned on that type,
/// so a type that cannot be decoded is reported there.
fn decode(consume: &Consume) -> TokenStream {
    let ty = consume.payload;
    let span = ty.span();
    let decoder = decoder(consume.payload_kind, span);
    quote_spanned! {span=>
        ::checkpoint::__private::#decoder::<#ty>(&__checkpoint_message.payload)
    }
}

/// The `__private` fn that decodes a payload of `kind`, spanned at the payload type.
fn decoder(kind: PayloadKind, span: Span) -> Ident {
    match kind {
        PayloadKind::Raw => Ident::new("decode_raw_payload", span),
        PayloadKind::Json | PayloadKind::Borrowed => Ident::new("decode_json_payload", span),
    }
}

/// The user's fn called with `payload` (and the context when it takes one), awaited when it is
/// async; spanned at the fn's name and `async`.
fn call_user_fn(user: &Consume, payload: &TokenStream) -> TokenStream {
    let ctx = user.takes_ctx.then(|| quote!(, __checkpoint_ctx));
    let user_fn = &user.sig.ident;
    let call = quote_spanned! {user_fn.span()=>
        Self::#user_fn(self, #payload #ctx)
    };
    match &user.sig.asyncness {
        Some(asyncness) => quote_spanned! {asyncness.span=>
            ::checkpoint::__private::assert_send_future(#call).await
        },
        None => call,
    }
}

fn consume_fn(consume: &Consume) -> TokenStream {
    let signature = consume_signature();
    let decode = decode(consume);
    let returned = call_user_fn(consume, &quote!(__checkpoint_payload));
    let output = consume.output;
    let convert = quote_spanned! {output.span()=>
        <#output as ::checkpoint::__private::ConsumeReturn>::into_consume_result(__checkpoint_returned)
    };
    quote! {
        #signature {
            ::checkpoint::__private::Box::pin(async move {
                let __checkpoint_payload = match #decode {
                    ::checkpoint::__private::Result::Ok(__checkpoint_payload) => __checkpoint_payload,
                    ::checkpoint::__private::Result::Err(__checkpoint_error) => {
                        return ::checkpoint::__private::Result::Err(__checkpoint_error);
                    }
                };
                let __checkpoint_returned = #returned;
                #convert
            })
        }
    }
}

/// `Handler::consume_batch`: decodes every payload into the element type of the user's
/// `Vec<T>` (a payload that does not decode fails the call, so the batch goes one by one and
/// that message fails in `consume`), then calls the user's fn.
fn consume_batch_fn(batch: &Consume) -> TokenStream {
    let ty = batch.payload;
    let span = ty.span();
    let decoder = decoder(batch.payload_kind, span);
    let decode = quote_spanned! {span=>
        ::checkpoint::__private::#decoder::<#ty>(&__checkpoint_delivery.message.payload)
    };
    let returned = call_user_fn(batch, &quote!(__checkpoint_payloads));
    let output = batch.output;
    let convert = quote_spanned! {output.span()=>
        <#output as ::checkpoint::__private::ConsumeBatchReturn>::into_batch_result(__checkpoint_returned)
    };
    quote! {
        fn consume_batch<'__checkpoint>(
            &'__checkpoint self,
            __checkpoint_ctx: &'__checkpoint mut ::checkpoint::__private::BatchContext<'_>,
        ) -> ::checkpoint::__private::Option<
            ::checkpoint::__private::BoxFuture<
                '__checkpoint,
                ::checkpoint::__private::Result<
                    ::checkpoint::__private::Vec<::checkpoint::__private::Outcome>,
                    ::checkpoint::__private::HandlerError,
                >,
            >,
        > {
            ::checkpoint::__private::Option::Some(::checkpoint::__private::Box::pin(async move {
                let __checkpoint_batch = __checkpoint_ctx.deliveries();
                let mut __checkpoint_payloads =
                    ::checkpoint::__private::Vec::with_capacity(__checkpoint_batch.len());
                for __checkpoint_delivery in __checkpoint_batch {
                    match #decode {
                        ::checkpoint::__private::Result::Ok(__checkpoint_payload) => {
                            __checkpoint_payloads.push(__checkpoint_payload);
                        }
                        ::checkpoint::__private::Result::Err(__checkpoint_error) => {
                            return ::checkpoint::__private::Result::Err(__checkpoint_error);
                        }
                    }
                }
                let __checkpoint_returned = #returned;
                #convert
            }))
        }
    }
}

/// A `Handler` extractor method that decodes the payload and forwards to the user's fn.
fn extractor_fn(consume: &Consume, extractor: &ExtractorSig) -> TokenStream {
    let decode = decode(consume);
    let method = Ident::new(extractor.kind.name(), Span::call_site());
    let returns = match extractor.kind {
        Extractor::RetryConsume => quote!(bool),
        Extractor::EntityTime => quote! {
            ::checkpoint::__private::Option<
                ::checkpoint::__private::DateTime<::checkpoint::__private::Utc>,
            >
        },
        _ => quote!(::checkpoint::__private::Option<::checkpoint::__private::String>),
    };
    let forward = forward_to_extractor(extractor, &returns);
    if extractor.kind == Extractor::RetryConsume {
        return quote! {
            fn #method(
                &self,
                __checkpoint_message: &::checkpoint::__private::Message,
                __checkpoint_metadata: &::checkpoint::__private::Metadata,
                __checkpoint_error: &::checkpoint::__private::HandlerError,
            ) -> #returns {
                match #decode {
                    ::checkpoint::__private::Result::Ok(__checkpoint_payload) => #forward,
                    ::checkpoint::__private::Result::Err(_) => {
                        ::checkpoint::__private::default_retry_decision(
                            <Self as ::checkpoint::__private::Handler>::max_retries(self),
                            __checkpoint_metadata.retry_count,
                        )
                    }
                }
            }
        };
    }
    quote! {
        fn #method(&self, __checkpoint_message: &::checkpoint::__private::Message) -> #returns {
            let __checkpoint_payload = ::checkpoint::__private::Result::ok(#decode)?;
            #forward
        }
    }
}

/// Calls the user's extractor fn with the decoded payload (and for `retry_consume` the metadata
/// and error), checking that it returns `returns`. A wrong parameter type is reported at that
/// parameter, a wrong return type at the user's return type.
fn forward_to_extractor(extractor: &ExtractorSig, returns: &TokenStream) -> TokenStream {
    let user_fn = extractor.ident;
    let receiver = extractor.takes_self.then(|| quote!(self,));
    // Deref coercion lets a `String` payload's extractor take `&str` and a `Vec<u8>` one `&[u8]`.
    let (first, last) = span_range(extractor.params[0]);
    let payload_arg = {
        let reference = quote_spanned!(first=> &);
        let payload = Ident::new("__checkpoint_payload", last);
        quote!(#reference #payload)
    };
    let more_args = (extractor.kind == Extractor::RetryConsume)
        .then(|| quote!(, __checkpoint_metadata, __checkpoint_error));
    let call = quote_spanned! {user_fn.span()=>
        Self::#user_fn(#receiver #payload_arg #more_args)
    };
    let output = extractor.output;
    quote_spanned! {output.span()=>
        <#output as ::checkpoint::__private::ExtractorReturn<#returns>>::into_extracted(#call)
    }
}

/// The spans of the first and last token of `tokens`. Quoting an expression's first token with
/// the one and its last with the other makes rustc underline all of `tokens`, where a
/// `Span::join` is not available (what `syn::Error::new_spanned` does).
fn span_range(tokens: &impl ToTokens) -> (Span, Span) {
    let mut spans = tokens
        .to_token_stream()
        .into_iter()
        .map(|token| token.span());
    let first = spans.next().unwrap_or_else(Span::call_site);
    (first, spans.last().unwrap_or(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(output: &TokenStream) -> Vec<String> {
        // `compile_error! { "…" }` invocations, as `into_compile_error` writes them.
        let text = output.to_string();
        text.split("compile_error !")
            .skip(1)
            .filter_map(|rest| {
                let start = rest.find('"')? + 1;
                let end = start + rest[start..].find("\" }")?;
                Some(rest[start..end].replace("\\\"", "\""))
            })
            .collect()
    }

    #[test]
    fn readme_example() {
        let output = expand(
            quote!(max_retries = 3),
            quote! {
                impl Orders {
                    async fn consume(&self, order: OrderPlaced, ctx: &mut Context<'_>) -> Result<Outcome, AppError> {
                        Ok(ctx.ack(order.id.clone(), order.at))
                    }
                    #[entity_id]
                    fn entity_id(order: &OrderPlaced) -> Option<String> { Some(order.id.clone()) }
                    #[event_type]
                    fn event_type(order: &OrderPlaced) -> Option<String> { Some(order.kind.clone()) }
                }
            },
        );
        let expected = quote! {
            impl Orders {
                async fn consume(&self, order: OrderPlaced, ctx: &mut Context<'_>) -> Result<Outcome, AppError> {
                    Ok(ctx.ack(order.id.clone(), order.at))
                }
                fn entity_id(order: &OrderPlaced) -> Option<String> { Some(order.id.clone()) }
                fn event_type(order: &OrderPlaced) -> Option<String> { Some(order.kind.clone()) }
            }
            const _: () = {
                #[automatically_derived]
                impl ::checkpoint::__private::Handler for Orders {
                    fn name(&self) -> &str {
                        "Orders"
                    }
                    fn max_retries(&self) -> ::checkpoint::__private::Option<u32> {
                        ::checkpoint::__private::Option::Some(3u32)
                    }
                    fn consume<'__checkpoint>(
                        &'__checkpoint self,
                        __checkpoint_message: &'__checkpoint ::checkpoint::__private::Message,
                        __checkpoint_ctx: &'__checkpoint mut ::checkpoint::__private::Context<'_>,
                    ) -> ::checkpoint::__private::BoxFuture<
                        '__checkpoint,
                        ::checkpoint::__private::Result<
                            ::checkpoint::__private::Outcome,
                            ::checkpoint::__private::HandlerError,
                        >,
                    > {
                        ::checkpoint::__private::Box::pin(async move {
                            let __checkpoint_payload = match ::checkpoint::__private::decode_json_payload::<OrderPlaced>(&__checkpoint_message.payload) {
                                ::checkpoint::__private::Result::Ok(__checkpoint_payload) => __checkpoint_payload,
                                ::checkpoint::__private::Result::Err(__checkpoint_error) => {
                                    return ::checkpoint::__private::Result::Err(__checkpoint_error);
                                }
                            };
                            let __checkpoint_returned = ::checkpoint::__private::assert_send_future(
                                Self::consume(self, __checkpoint_payload, __checkpoint_ctx)
                            ).await;
                            <Result<Outcome, AppError> as ::checkpoint::__private::ConsumeReturn>::into_consume_result(
                                __checkpoint_returned
                            )
                        })
                    }
                    fn entity_id(
                        &self,
                        __checkpoint_message: &::checkpoint::__private::Message
                    ) -> ::checkpoint::__private::Option<::checkpoint::__private::String> {
                        let __checkpoint_payload = ::checkpoint::__private::Result::ok(
                            ::checkpoint::__private::decode_json_payload::<OrderPlaced>(&__checkpoint_message.payload)
                        )?;
                        <Option<String> as ::checkpoint::__private::ExtractorReturn<
                            ::checkpoint::__private::Option<::checkpoint::__private::String>
                        >>::into_extracted(Self::entity_id(&__checkpoint_payload))
                    }
                    fn event_type(
                        &self,
                        __checkpoint_message: &::checkpoint::__private::Message
                    ) -> ::checkpoint::__private::Option<::checkpoint::__private::String> {
                        let __checkpoint_payload = ::checkpoint::__private::Result::ok(
                            ::checkpoint::__private::decode_json_payload::<OrderPlaced>(&__checkpoint_message.payload)
                        )?;
                        <Option<String> as ::checkpoint::__private::ExtractorReturn<
                            ::checkpoint::__private::Option<::checkpoint::__private::String>
                        >>::into_extracted(Self::event_type(&__checkpoint_payload))
                    }
                }
            };
        };
        assert_eq!(output.to_string(), expected.to_string());
    }

    #[test]
    fn sync_consume_with_raw_payload_name_and_transactional() {
        let output = expand(
            quote!(name = "shipments", transactional),
            quote! {
                impl Shipments {
                    fn consume(&self, bytes: &[u8]) -> Outcome { Outcome::skip() }
                    #[retry_consume]
                    fn retry(&self, _: &[u8], _: &Metadata, _: &HandlerError) -> bool { false }
                }
            },
        )
        .to_string();
        assert!(
            errors_of(&output.parse().expect("tokens")).is_empty(),
            "{output}"
        );
        for expected in [
            quote!(
                fn name(&self) -> &str {
                    "shipments"
                }
            ),
            quote!(
                fn transactional(&self) -> bool {
                    true
                }
            ),
            quote!(::checkpoint::__private::decode_raw_payload::<&[u8]>(
                &__checkpoint_message.payload
            )),
            quote!(let __checkpoint_returned = Self::consume(self, __checkpoint_payload);),
            quote!(::checkpoint::__private::Result::Ok(__checkpoint_payload) =>
                <bool as ::checkpoint::__private::ExtractorReturn<bool>>::into_extracted(
                    Self::retry(self, &__checkpoint_payload, __checkpoint_metadata, __checkpoint_error)
                ),),
        ] {
            assert!(
                output.contains(&expected.to_string()),
                "missing {expected}\nin {output}"
            );
        }
        assert!(!output.contains("assert_send_future"), "{output}");
        assert!(!output.contains("fn max_retries"), "{output}");
        assert!(!output.contains("#[retry_consume]"), "{output}");
    }

    #[test]
    fn every_mistake_is_reported_with_the_impl_and_a_stub() {
        let output = expand(
            quote!(max_retries = "3", colour = 1),
            quote! {
                impl Orders {
                    fn consume(self, a: u8, b: u8, c: u8) {}
                    #[entity_id]
                    async fn id(a: &u8, b: &u8) -> Option<String> { None }
                }
            },
        );
        assert_eq!(
            errors_of(&output),
            [
                "`max_retries` takes an integer literal, like `max_retries = 3`",
                "unknown `#[checkpoint_handler]` argument `colour`; expected one of \
                 `max_retries`, `name`, `transactional`",
                "`consume` takes `&self`",
                "the second parameter of `consume` is the context: `ctx: &mut Context<'_>`",
                "`consume` takes at most two parameters after `&self`: the payload and \
                 `ctx: &mut Context<'_>`",
                "`consume` must return `Outcome` or `Result<Outcome, E>`",
                "an extractor is a plain fn; a `#[entity_id]` fn has the signature \
                 `fn(&T) -> Option<String>`, where `T` is the payload type of `consume` \
                 (`&self` may come first)",
                "a `#[entity_id]` fn has the signature `fn(&T) -> Option<String>`, where `T` is \
                 the payload type of `consume` (`&self` may come first); this one takes 2 \
                 parameters",
            ]
        );
        let text = output.to_string();
        assert!(text.contains("# [allow (dead_code)] impl Orders"), "{text}");
        assert!(text.contains(&quote!(::checkpoint::__private::invalid_handler()).to_string()));
        assert!(!text.contains("# [entity_id]"), "{text}");
    }

    #[test]
    fn missing_consume_points_at_the_self_type() {
        let output = expand(quote!(), quote!(impl Orders { fn helper(&self) {} }));
        let errors = errors_of(&output);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("missing `consume` fn"), "{errors:?}");
    }

    #[test]
    fn not_an_impl_block_is_returned_unchanged_with_an_error() {
        let item = quote!(
            fn consume(&self) {}
        );
        let output = expand(quote!(), item.clone());
        assert_eq!(
            errors_of(&output),
            [
                "`#[checkpoint_handler]` goes on an `impl YourHandler { … }` block that holds \
                 `consume` and the extractor fns"
            ]
        );
        assert!(output.to_string().ends_with(&item.to_string()));
    }

    #[test]
    fn trait_and_generic_impls_get_no_stub() {
        for item in [
            quote!(impl Handler for Orders { fn consume(&self, p: String) -> Outcome { todo!() } }),
            quote!(
                impl<T> Orders<T> {
                    fn consume(&self, p: String) -> Outcome {
                        todo!()
                    }
                }
            ),
        ] {
            let output = expand(quote!(), item);
            assert_eq!(errors_of(&output).len(), 1, "{output}");
            assert!(!output.to_string().contains("invalid_handler"), "{output}");
        }
    }

    #[test]
    fn helper_attribute_outside_a_handler() {
        let output = helper_outside_handler(
            Extractor::DedupKey,
            quote!(
                fn key() {}
            ),
        );
        assert_eq!(
            errors_of(&output),
            ["`#[dedup_key]` must be used inside a `#[checkpoint_handler]` impl block"]
        );
    }
}

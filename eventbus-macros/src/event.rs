//! Parsing of `#[event(...)]` attributes and expansion of `#[derive(Event)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, ExprLit, Fields, Ident, Lit, LitStr, Path};

/// The attributes of one `#[derive(Event)]`, validated.
struct EventAttrs {
    ty: LitStr,
    version: u32,
    destination: LitStr,
    key: Ident,
    krate: Path,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let attrs = parse_attrs(input)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let EventAttrs {
        ty,
        version,
        destination,
        key,
        krate,
    } = attrs;
    // Spanned at `key = field`, so a key type without `Display` is reported there.
    let partition_key = quote::quote_spanned! {key.span()=>
        ::std::string::ToString::to_string(&self.#key)
    };
    // A generic struct is not one event type until its parameters are chosen,
    // so only concrete types join the distributed registry; generic ones are
    // registered by hand (`Registry::register::<MyEvent<T>>()`).
    let registration = input.generics.params.is_empty().then(|| {
        quote! {
            #krate::schema::__private::inventory::submit! {
                #krate::schema::__private::Registration::of::<#name>()
            }
        }
    });
    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #name #ty_generics #where_clause {
                const TYPE: &'static str = #ty;
                const VERSION: u32 = #version;
                const DESTINATION: &'static str = #destination;

                fn partition_key(&self) -> ::std::string::String {
                    #partition_key
                }
            }

            #registration
        };
    })
}

/// The attribute names `#[event(...)]` accepts.
const KNOWN: &[&str] = &["type", "version", "destination", "key", "crate"];

/// Parses every `#[event(...)]` attribute, collecting all errors so the user sees
/// them in one compile (a bad value never hides the attributes after it).
fn parse_attrs(input: &DeriveInput) -> syn::Result<EventAttrs> {
    let mut errors: Vec<syn::Error> = Vec::new();

    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(named),
            _ => {
                errors.push(syn::Error::new(
                    input.ident.span(),
                    "#[derive(Event)] needs a struct with named fields",
                ));
                None
            }
        },
        _ => {
            errors.push(syn::Error::new(
                input.ident.span(),
                "#[derive(Event)] can only be used on structs with named fields",
            ));
            None
        }
    };

    let mut ty: Option<LitStr> = None;
    let mut version: Option<u32> = None;
    let mut destination: Option<LitStr> = None;
    let mut key: Option<Ident> = None;
    let mut krate: Option<Path> = None;
    let mut seen: Vec<String> = Vec::new();
    let mut first_attr: Option<Span> = None;

    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        first_attr.get_or_insert_with(|| attr.span());
        let result = attr.parse_nested_meta(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            // Always consume `= value`, so one bad value does not stop the parse.
            let value: Expr = meta.value()?.parse()?;
            if !KNOWN.contains(&name.as_str()) {
                errors.push(meta.error(
                    "unknown `event` attribute; expected one of `type`, `version`, \
                     `destination`, `key`, `crate`",
                ));
                return Ok(());
            }
            if seen.contains(&name) {
                errors.push(meta.error(format!("duplicate `{name}` attribute")));
                return Ok(());
            }
            seen.push(name.clone());
            let result = match name.as_str() {
                "type" => string(
                    &value,
                    "`type` takes a string, e.g. `type = \"com.example.order.placed\"`",
                )
                .and_then(|lit| validate_type(&lit).map(|()| ty = Some(lit))),
                "version" => positive(&value).map(|v| version = Some(v)),
                "destination" => string(
                    &value,
                    "`destination` takes a string, e.g. `destination = \"orders\"`",
                )
                .and_then(|lit| {
                    if lit.value().trim().is_empty() {
                        Err(syn::Error::new(
                            lit.span(),
                            "`destination` must not be empty",
                        ))
                    } else {
                        destination = Some(lit);
                        Ok(())
                    }
                }),
                "key" => field_name(&value).map(|ident| key = Some(ident)),
                _ => string(
                    &value,
                    "`crate` takes a path in a string, e.g. `crate = \"::eventbus\"`",
                )
                .and_then(|lit| lit.parse::<Path>().map(|p| krate = Some(p))),
            };
            if let Err(e) = result {
                errors.push(e);
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }

    match first_attr {
        None => errors.push(syn::Error::new(
            input.ident.span(),
            "missing #[event(type = \"...\", destination = \"...\", key = field)] attribute",
        )),
        Some(span) => {
            let hints = [
                (
                    "type",
                    "the CloudEvents type, e.g. `type = \"com.example.order.placed\"`",
                ),
                (
                    "destination",
                    "the topic or exchange, e.g. `destination = \"orders\"`",
                ),
                ("key", "the field that orders events, e.g. `key = order_id`"),
            ];
            for (what, hint) in hints {
                if !seen.iter().any(|s| s == what) {
                    errors.push(syn::Error::new(
                        span,
                        format!("missing `{what}` in #[event(...)]: {hint}"),
                    ));
                }
            }
        }
    }

    if let (Some(key), Some(fields)) = (&key, fields) {
        let exists = fields
            .named
            .iter()
            .any(|f| f.ident.as_ref().is_some_and(|i| i == key));
        if !exists {
            errors.push(syn::Error::new(
                key.span(),
                format!(
                    "no field `{key}` on `{}` to use as the ordering key",
                    input.ident
                ),
            ));
        }
    }

    if let Some(mut all) = errors.first().cloned() {
        for e in errors.into_iter().skip(1) {
            all.combine(e);
        }
        return Err(all);
    }
    match (ty, destination, key) {
        (Some(ty), Some(destination), Some(key)) => Ok(EventAttrs {
            ty,
            version: version.unwrap_or(1),
            destination,
            key,
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::eventbus)),
        }),
        _ => Err(syn::Error::new(
            Span::call_site(),
            "invalid #[event] attribute",
        )),
    }
}

fn string(value: &Expr, message: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(other, message)),
    }
}

fn positive(value: &Expr) -> syn::Result<u32> {
    let message = "`version` must be a positive integer, e.g. `version = 2`";
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<u32>() {
            Ok(0) => Err(syn::Error::new(i.span(), "`version` starts at 1")),
            Ok(v) => Ok(v),
            Err(_) => Err(syn::Error::new(i.span(), message)),
        },
        other => Err(syn::Error::new_spanned(other, message)),
    }
}

fn field_name(value: &Expr) -> syn::Result<Ident> {
    match value {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().cloned().ok_or_else(|| {
            syn::Error::new_spanned(p, "`key` takes a field name, e.g. `key = order_id`")
        }),
        other => Err(syn::Error::new_spanned(
            other,
            "`key` takes a field name without quotes, e.g. `key = order_id`",
        )),
    }
}

/// A CloudEvents `type` is a non-empty string; we also refuse whitespace and
/// control characters, which no broker header or routing key handles well.
fn validate_type(lit: &LitStr) -> syn::Result<()> {
    let value = lit.value();
    if value.is_empty() {
        return Err(syn::Error::new(lit.span(), "`type` must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new(
            lit.span(),
            format!("`type` must not contain whitespace or control characters (found {c:?})"),
        ));
    }
    Ok(())
}

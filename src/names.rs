//! One name per concept: a named enum of the library derives `clap::ValueEnum` and serde with
//! the same kebab-case names, and [`named!`] gives it the `Display` that reports, file headers,
//! run directories and cache keys print — never `{:?}`.

/// `Display` from the value's `clap::ValueEnum` name, which serde spells the same (checked for
/// every named enum by `tests/names.rs`).
#[macro_export]
macro_rules! named {
    ($($name:ty),+ $(,)?) => {$(
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let value = ::clap::ValueEnum::to_possible_value(self)
                    .expect("named enums skip no variant");
                f.write_str(value.get_name())
            }
        }
    )+};
}

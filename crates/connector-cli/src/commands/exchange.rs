//! `connector exchange NAME --code CODE`: exchange a Self Client grant code.

use super::Context;
use crate::exit::{Exit, Failure};
use catalyst_connectors::GrantCode;

pub async fn run(ctx: &Context, name: &str, code: String) -> Result<(), Failure> {
    let connector = ctx.connector(name)?;
    let generated = connector
        .generate_access_token(&GrantCode::new(code))
        .await?;
    if generated.refresh_token.is_none() {
        return Err(Failure::new(
            Exit::Reauthorize,
            format!("Zoho returned no refresh token for connector `{name}`"),
        )
        .hint("generate the code with access type offline"));
    }
    eprintln!("Connector `{name}` is authorized; its refresh token is in the token store.");
    Ok(())
}

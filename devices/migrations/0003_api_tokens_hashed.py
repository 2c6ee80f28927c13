"""API tokens move from DRF's authtoken (kept in clear) to django-rest-knox (kept as digests).

Each existing token is carried over as its digest, so clients keep working with the token they
have; it now expires like a new one (API_TOKEN_TTL_DAYS from now). Then DRF's table, the last
copy of the tokens in clear, is dropped, with its migration records, as `migrate authtoken zero`
would have left them.
"""

from knox.crypto import hash_token
from knox.settings import CONSTANTS, knox_settings

from django.db import migrations
from django.utils import timezone

OLD_TABLE = "authtoken_token"


def carry_over_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if OLD_TABLE not in connection.introspection.table_names():
        return
    AuthToken = apps.get_model("knox", "AuthToken")
    ttl = knox_settings.TOKEN_TTL
    expiry = timezone.now() + ttl if ttl is not None else None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {OLD_TABLE}")
        rows = cursor.fetchall()
    AuthToken.objects.bulk_create(
        AuthToken(
            digest=hash_token(key),
            token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH],
            user_id=user_id,
            expiry=expiry,
        )
        for key, user_id in rows
    )
    schema_editor.execute(f"DROP TABLE {OLD_TABLE}")
    schema_editor.execute("DELETE FROM django_migrations WHERE app = 'authtoken'")


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0002_command"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    # Forward only: the tokens in clear are gone, by design.
    operations = [migrations.RunPython(carry_over_tokens, migrations.RunPython.noop)]

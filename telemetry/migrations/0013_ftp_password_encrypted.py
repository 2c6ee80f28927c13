"""FTP source passwords encrypted at rest (Fernet, FIELD_ENCRYPTION_KEY).

The column becomes text (a Fernet token is longer than the password), the passwords already
stored are encrypted in place, and only then does the model read the column through
`EncryptedTextField`.
"""

from django.db import migrations, models

from energy_portal.field_encryption import EncryptedTextField, decrypt, encrypt


def _rewrite(apps, change) -> None:
    FtpSource = apps.get_model("telemetry", "FtpSource")
    for pk, password in FtpSource.objects.exclude(password="").values_list("pk", "password"):
        FtpSource.objects.filter(pk=pk).update(password=change(password))


def encrypt_passwords(apps, schema_editor):
    _rewrite(apps, encrypt)


def decrypt_passwords(apps, schema_editor):
    _rewrite(apps, decrypt)


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0012_fleet_version")]

    operations = [
        migrations.AlterField(
            model_name="ftpsource", name="password", field=models.TextField(blank=True)
        ),
        migrations.RunPython(encrypt_passwords, decrypt_passwords),
        migrations.AlterField(
            model_name="ftpsource", name="password", field=EncryptedTextField(blank=True)
        ),
    ]

# One image for every portal process (ASGI server, Celery worker, beat); compose.yaml picks the command.
FROM node:20-bookworm-slim AS assets
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_SETTINGS_MODULE=energy_portal.settings
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY --from=assets /app/node_modules ./node_modules
COPY . .
# Static files are part of the image: every container of it serves the same, hashed names
# (ServeStatic's manifest). Settings load with placeholders here (a throwaway encryption key made
# for this step); nothing connects at build time.
RUN FIELD_ENCRYPTION_KEY=$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
    DJANGO_DEBUG=0 DJANGO_SECRET_KEY=build-only DATABASE_URL=postgres://build@127.0.0.1/build \
    REDIS_URL=redis://127.0.0.1:6379/0 python manage.py collectstatic --no-input
# /var/lib/energy-portal/metrics: the metrics volume (compose.yaml) starts as this folder, the
# portal user's.
RUN useradd --system --home /app portal && mkdir -p /app/var /var/lib/energy-portal/metrics \
    && chown portal /app/var /var/lib/energy-portal/metrics
USER portal
EXPOSE 8000
CMD ["python", "-m", "energy_portal.asgi_server", "--host", "0.0.0.0", "--port", "8000"]

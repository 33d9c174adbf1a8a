"""ML domain logic. Imports neither prefect nor sqlalchemy."""

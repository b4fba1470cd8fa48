-- deriver migration 003 (demo only): the indexes the sample pipelines in pipelines/ need on the
-- pagila database, so that `deriver validate` on the demo is clean. scripts/demo.sh applies it;
-- `deriver setup` does not. Idempotent.
--
-- Each lookup and child is joined on its `on` columns: deriving a record looks the joined rows up
-- by them, and a change to a joined row looks the records it affects up by the other side. Without
-- an index either lookup scans the table, and `deriver validate` warns (`no index on …`). For your
-- own pipelines, create the indexes those warnings name in your own schema, the way this file does
-- for pagila.

-- films.yaml, child `copies`: inventory.film_id = film.film_id (pagila has only (store_id, film_id)).
CREATE INDEX IF NOT EXISTS idx_inventory_film_id ON public.inventory (film_id);

-- films.yaml, child `categories` through film_category, and category_films.yaml, lookup `category`:
-- a change to a category finds its films by film_category.category_id (the primary key starts
-- with film_id).
CREATE INDEX IF NOT EXISTS idx_film_category_category_id ON public.film_category (category_id);

-- customers.yaml, child `payments`: payment.customer_id = customer.customer_id. payment is
-- partitioned; the index on the parent covers every partition (existing equal indexes of the
-- partitions are attached to it).
CREATE INDEX IF NOT EXISTS idx_payment_customer_id ON public.payment (customer_id);

-- customers.yaml, child `rentals`: rental.customer_id = customer.customer_id.
CREATE INDEX IF NOT EXISTS idx_rental_customer_id ON public.rental (customer_id);

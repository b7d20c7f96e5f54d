DROP TABLE provisioners;
